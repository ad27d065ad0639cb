"""The Flask app factory. Production runs it under gunicorn, one model per process:

    gunicorn --worker-class gthread --workers 1 --threads 88 --timeout 120 \\
        --bind 0.0.0.0:8000 'serve.app:create_app()'

(`distill-serve gunicorn` runs exactly that with the thread count worked out from the config.)
With no argument, create_app reads its config from $DISTILL_SERVE_CONFIG and DISTILL_SERVE_*
variables (serve/config.py). Never use gunicorn's --preload: the model's worker thread would be
started in the master and would not exist in the forked worker.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from distillery.runtime import Generation, ModelRuntime

from . import chatrest, openai_api
from .config import ServeConfig, load_config
from .edge import ApiError
from .metrics import Metrics
from .service import ModelService
from .upstream import UpstreamService

log = logging.getLogger("serve")

_PROTECTED = (chatrest.PATH, openai_api.PREFIX)  # need the API key when one is configured
_QUIET = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes: logged at DEBUG only
# A caller's X-Request-ID is reused (to follow a request across services) only if it is short
# and plain: it goes into logs and headers verbatim.
_CALLER_RID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def create_app(config: ServeConfig | None = None, *, runtime: ModelRuntime | None = None) -> Flask:
    """The server for one model. Returns at once; the model loads in the background
    (/readyz turns 200 when it is ready) unless an already loaded `runtime` is given."""
    config = config or load_config()
    if runtime is None:
        config.check()
    _setup_logging(config.log_level)
    # Resolved once here, not per request: the prompt file beside the model does not change.
    config = config.model_copy(update={"system_prompt": config.trained_system_prompt()})
    service: ModelService | UpstreamService = (UpstreamService(config) if config.upstream
                                               else ModelService(config, runtime=runtime))
    metrics = Metrics(service.snapshot)
    api_key = config.api_key()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # Chinese stays readable in the body
    app.json.sort_keys = False  # type: ignore[attr-defined]  # the envelope keeps the order apps know
    app.extensions["distillery"] = service
    app.extensions["distillery.observe_stream"] = lambda gen, error: _stream_ended(gen, error, metrics)
    app.register_blueprint(chatrest.blueprint(service))
    app.register_blueprint(openai_api.blueprint(service))

    @app.before_request
    def _start() -> None:
        g.started = time.monotonic()
        caller = request.headers.get("X-Request-ID", "")
        g.rid = caller if _CALLER_RID.fullmatch(caller) else uuid.uuid4().hex
        metrics.in_flight.inc()
        g.counted = True
        if api_key and request.path.startswith(_PROTECTED) and not _authorized(api_key):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           kind="authentication_error", headers={"WWW-Authenticate": 'Bearer realm="distillery"'})

    @app.teardown_request
    def _end(_: BaseException | None) -> None:
        if g.pop("counted", False):
            metrics.in_flight.dec()

    @app.after_request
    def _finish(response: Response) -> Response:
        rid, started = g.get("rid"), g.get("started")
        if rid is None or started is None:  # failed before our first hook ran
            return response
        response.headers["X-Request-ID"] = rid
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"  # bounded label set
        seconds = time.monotonic() - started
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(seconds)
        fields = [f"rid={rid}", f"{request.method} {request.path}", f"status={response.status_code}",
                  f"ms={seconds * 1000:.1f}"]
        gen = g.get("generation")
        if gen is not None:
            metrics.observe_generation(endpoint, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason)
            fields += [f"prompt_tokens={gen.prompt_tokens}", f"completion_tokens={gen.completion_tokens}",
                       f"finish={gen.finish_reason}"]
        if g.get("error"):
            fields.append(f"error={json.dumps(g.error, ensure_ascii=False)}")
        if config.log_prompts and g.get("texts"):
            fields += [f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in g.texts.items()]
        log.log(logging.DEBUG if request.path in _QUIET else logging.INFO, " ".join(fields))
        return response

    def render(err: ApiError) -> Response:
        g.error = err.message
        if request.path.startswith(openai_api.PREFIX):
            return openai_api.error_response(err)
        return chatrest.error_response(err)

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        return render(err)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return render(_explain(exc, config))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        rid = g.get("rid", "-")
        log.exception("rid=%s unhandled error", rid)
        return render(ApiError(500, f"internal error (request id {rid}); the server log has the details",
                               kind="server_error"))

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        """Alive: the process answers. 503 only when the model failed to load (restart it)."""
        if service.state == "failed":
            return jsonify({"status": "failed", "error": service.error}), 503
        return jsonify({"status": "ok", "model": service.state}), 200

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        """Ready: the model is loaded and requests are served; send traffic now."""
        info = service.describe()
        return jsonify(info), 200 if info["ready"] else 503

    @app.get("/metrics")
    def metrics_view() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    service.start()
    log.info("serving POST %s and POST /v1/chat/completions; API key %s", chatrest.PATH,
             f"required (from ${config.api_key_env})" if api_key else f"not required (${config.api_key_env} is empty)")
    return app


def _stream_ended(gen: Generation | None, error: str | None, metrics: Metrics) -> None:
    """A streamed answer's own log line and token metrics: the request's line was written when
    its first byte went out, before anything was generated."""
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    fields = [f"rid={g.rid}", "stream ended", f"ms={(time.monotonic() - g.started) * 1000:.1f}"]
    if gen is not None:
        metrics.observe_generation(endpoint, gen.prompt_tokens, gen.completion_tokens, gen.finish_reason)
        fields += [f"prompt_tokens={gen.prompt_tokens}", f"completion_tokens={gen.completion_tokens}",
                   f"finish={gen.finish_reason}"]
    else:
        fields.append("finish=cancelled" if error is None else "finish=error")
    if error:
        fields.append(f"error={json.dumps(error, ensure_ascii=False)}")
    log.info(" ".join(fields))


def _authorized(api_key: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # Constant time: response timing must not tell how much of a guessed key was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _explain(exc: HTTPException, config: ServeConfig) -> ApiError:
    """werkzeug's generic HTTP errors, reworded to say what to do instead."""
    status = exc.code or 500
    if isinstance(exc, NotFound):
        return ApiError(404, f"no route {request.method} {request.path}; this server answers POST {chatrest.PATH} "
                             f"and POST /v1/chat/completions", kind="not_found")
    if isinstance(exc, MethodNotAllowed):
        allowed = sorted(set(exc.valid_methods or []) - {"HEAD", "OPTIONS"})
        return ApiError(405, f"{request.method} is not allowed on {request.path}; use {' or '.join(allowed)}",
                        headers={"Allow": ", ".join(exc.valid_methods or [])})
    if isinstance(exc, RequestEntityTooLarge):
        return ApiError(413, f"the request body is larger than {config.max_body_bytes} bytes (max_body_bytes)")
    return ApiError(status, exc.description or exc.name)


def _setup_logging(level: str) -> None:
    """Give the 'serve' logger a stderr handler when nothing else (gunicorn leaves the root
    logger bare; pytest and embedding apps do not) will print its records."""
    logger = logging.getLogger("serve")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
