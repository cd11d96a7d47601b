# A Debian 12 image with xenfb-harness and everything it needs installed.
# Building the dom0 image runs mmdebstrap as root, which mounts inside its chroot, so run the container with
# --privileged (or at least CAP_SYS_ADMIN):
#   docker build -t xenfb-harness .
#   docker run --rm --privileged -v xfb-cache:/root/.cache xenfb-harness            # the default run
#   docker run --rm --privileged -v xfb-cache:/root/.cache xenfb-harness scripts/test
# Fully qualified: podman (unlike docker) has no default registry for a short name like debian:12.
FROM docker.io/library/debian:12
COPY . /src
WORKDIR /src
RUN scripts/install && rm -rf /var/lib/apt/lists/*
ENV PATH=/src/.venv/bin:$PATH
CMD ["scripts/run-default"]
