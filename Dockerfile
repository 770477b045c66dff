# prevu's own image: `twistd -n prevu` as a non-root user, driving the host's
# Docker engine through its mounted socket. See docs/deploy.md.
#
#   docker build -t prevu .
#   docker build -t prevu --build-arg BASE=prevu-base/python:3.11 .   # no registry (tests)
#
#   docker run -d --name prevu \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v prevu-state:/var/lib/prevu -v /etc/prevu:/etc/prevu:ro \
#     -p 80:8000 -p 443:8443 prevu
#
# Any Debian-based Python >= 3.11 image with `venv` works as BASE.
ARG BASE=python:3.12-slim
FROM $BASE

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/prevu/bin:$PATH

# git: prevu fetches pull request heads with the git CLI. docker: the client
# only (taken out of Debian's docker.io package, without its daemon), which
# builds with the engine's BuildKit (docs/docker.md). The user `prevu`
# (uid 10001) owns only its state; the socket's group is added at `docker run`.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      git ca-certificates >/dev/null \
 && cd /tmp && apt-get download -qq docker.io 2>/dev/null \
 && dpkg-deb --fsys-tarfile docker.io_*.deb | tar -x -C / ./usr/bin/docker \
 && rm -f docker.io_*.deb && docker --version \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 prevu \
 && useradd --system --uid 10001 --gid prevu --home-dir /var/lib/prevu \
      --no-create-home --shell /usr/sbin/nologin prevu \
 && install -d -o prevu -g prevu -m 0750 /var/lib/prevu \
 && install -d -m 0755 /etc/prevu \
 && python3 -m venv /opt/prevu

# The dependencies first, from setup.cfg alone: a change to prevu's code then
# rebuilds only the last layers.
COPY setup.cfg /tmp/prevu-setup.cfg
RUN python3 -c "import configparser; c = configparser.ConfigParser(); c.read('/tmp/prevu-setup.cfg'); print('\n'.join(r for r in (l.strip() for l in c['options']['install_requires'].splitlines()) if r and not r.startswith('#')))" \
      > /tmp/requirements.txt \
 && /opt/prevu/bin/pip install -q -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt /tmp/prevu-setup.cfg

# twistd's plugin cache is made here, a second after the install: image layers
# keep mtimes to the second, and a cache no newer than prevu_plugin.py would be
# rebuilt (and fail to be written) at every start.
COPY . /tmp/prevu-src
RUN /opt/prevu/bin/pip install -q --no-deps /tmp/prevu-src \
 && rm -rf /tmp/prevu-src \
 && sleep 1 \
 && cd /var/lib/prevu && /opt/prevu/bin/twistd --help | grep -q prevu

COPY contrib/docker/prevu.toml /etc/prevu/prevu.toml

USER prevu:prevu
WORKDIR /var/lib/prevu
VOLUME ["/var/lib/prevu"]
# The proxy (HTTP, HTTPS). The control app stays on 127.0.0.1 inside the
# container: it is reached through the proxy under the host of public_url.
EXPOSE 8000 8443
STOPSIGNAL SIGTERM
CMD ["twistd", "--nodaemon", "--pidfile=", "prevu", "--config", "/etc/prevu/prevu.toml"]
