"""Stage 4, serve: the tuned model behind `POST /algorithm/ChatRest` (and an OpenAI-compatible
`/v1/chat/completions`), with int8/int4, the `####` early exit and dynamic batching. It imports
nothing but the core.

    app.create_app           the Flask app (gunicorn: `serve.app:create_app()`)
    config.load_config       ServeConfig from YAML, DISTILL_SERVE_* variables and overrides
    service.ModelService     the model behind the endpoints (distillery.runtime + distillery.engine)
    process.ServerProcess    the real server in a child process (scripts, benchmarks, `distill run`)
    step.STAGE               serve's part of `distill run`
    cli.main                 `distill serve` (run, gunicorn, config)
"""
