# A local stand-in for the `postgres:15` image, for deploy/tests/compose-e2e on machines that
# cannot pull registry images: Debian's PostgreSQL 15 behind the official image's contract
# (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA=/var/lib/postgresql/data, port 5432,
# password auth over TCP, pg_isready on PATH). Used only when `postgres:15` can be neither found
# nor pulled.
FROM debian:bookworm-slim
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 0700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint /usr/local/bin/docker-entrypoint.sh
USER postgres
VOLUME /var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
