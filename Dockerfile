# egressd daemon image: the DaemonSet in deploy/ runs it, chaos/kind builds it
# and loads it into a kind cluster.
FROM python:3.11-slim-bookworm

# nft and ip: the daemon drives nftables through libnftables (the nft command as
# a fallback), and operators use ip; ca-certificates for the API server's TLS.
# Versions follow the base image's Debian release (its security updates
# included), so they are not pinned one by one.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY egressd ./egressd
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /

# Root inside the container, with only NET_ADMIN and NET_RAW (the DaemonSet
# drops every other capability and forbids privilege escalation): Kubernetes
# cannot give a non-root process ambient capabilities, and netlink, nftables
# and packet sockets need them in the effective set; file capabilities on
# the interpreter would not help either, as no_new_privs (allowPrivilegeEscalation:
# false) ignores them.
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["egressd"]
CMD ["run", "--config", "/etc/egressd/egressd.yaml"]
