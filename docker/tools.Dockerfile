# syntax=docker/dockerfile:1
# The command-line tools without the model stack: `distill annotate` against an API teacher (Kimi
# or any OpenAI-compatible service) and `distill qc`. Build from the repository root:
#   docker build -f docker/tools.Dockerfile -t distillery-tools:0.1.0 .
# The embedded local teacher needs torch (the model extra): use a full install for that.

FROM python:3.11.14-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    DISTILLERY_WORKSPACE=/work/workspace

WORKDIR /app
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md ./
COPY distillery distillery
COPY annotate annotate
COPY qc qc
RUN pip install -c docker/constraints.txt ".[annotate,qc]" \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin tools
USER 10001
# Mount the project directory here: the workspace (SQLite store) and task/config files live in it.
WORKDIR /work
CMD ["distill", "--help"]
