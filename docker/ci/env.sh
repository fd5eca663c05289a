# Sourced by the CI scripts: podman with docker/ci/containers.conf and, when
# GRITSERVE_CI_STORE is set, a storage root of its own there, so that nothing
# built earlier on this machine (a cached layer would skip the test stage) is
# reused.
ci_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${ci_dir}/containers.conf"
if [ -n "${GRITSERVE_CI_STORE:-}" ]; then
  mkdir -p "${GRITSERVE_CI_STORE}"
  cat > "${GRITSERVE_CI_STORE}/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "${GRITSERVE_CI_STORE}/storage"
runroot = "${GRITSERVE_CI_STORE}/run"
CONF
  export CONTAINERS_STORAGE_CONF="${GRITSERVE_CI_STORE}/storage.conf"
fi
