FROM python:3.11-slim
WORKDIR /srv/driftwarden
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 9464
ENTRYPOINT ["driftwarden"]
CMD ["worker", "-c", "/etc/driftwarden/monitor.yaml"]
