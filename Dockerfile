# egressd daemon image: the DaemonSet in deploy/ runs it, chaos/kind builds it
# and loads it into a kind cluster.
FROM python:3.11-slim-bookworm

# nft and ip: the daemon drives nftables through the nft command, and the lab
# and operators use ip; ca-certificates for the API server's TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY egressd ./egressd
RUN pip install --no-cache-dir . && rm -rf /src

# Root inside the container, with only NET_ADMIN and NET_RAW (the DaemonSet
# drops every other capability and forbids privilege escalation): Kubernetes
# cannot give a non-root process ambient capabilities, and netlink, nftables
# and packet sockets need them in the effective set.
USER 0
ENTRYPOINT ["egressd"]
CMD ["run", "--config", "/etc/egressd/egressd.yaml"]
