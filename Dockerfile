# The service image: the same package `make run` installs, without the optional embedded
# PostgreSQL (`[embedded]`): a deployment sets DATABASE_URL. Run as an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY migrations ./migrations
RUN pip install --quiet -e . && useradd --system --uid 10001 app
USER app
EXPOSE 8000
CMD ["paxos-events", "serve"]
