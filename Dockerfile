FROM python:3.11-slim
WORKDIR /srv/driftwarden
COPY pyproject.toml README.md requirements.lock ./
COPY app ./app
# the locked versions, as CI tested and `make audit` audited them
RUN pip install --no-cache-dir -c requirements.lock . \
 && mkdir -p /var/lib/driftwarden && chown nobody:nogroup /var/lib/driftwarden
# the worker's local data (worker.data_dir is relative to the working directory)
WORKDIR /var/lib/driftwarden
USER nobody
# the metrics endpoint: a container's loopback is its own, so bind every interface
# (the port is published only where the deployment says; override to narrow it)
ENV DRIFTWARDEN_METRICS_HOST=0.0.0.0
EXPOSE 9464
ENTRYPOINT ["driftwarden"]
CMD ["worker", "-c", "/etc/driftwarden/monitor.yaml"]
