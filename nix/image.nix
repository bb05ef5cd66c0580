# The toolchain image through dockerTools: a layered image over the base image (the docker-archive
# webslm.baseimage makes with mmdebstrap from the lock's snapshot archive: the very file
# `webslm toolchain` loads into Docker, no registry pull) and the root filesystem of the
# Dockerfile's `toolchain` stage (`rootfs`, a tarball the Docker build exports), with the same
# config, labels and determinism settings. Every pin comes from nix/lock.nix; nothing is repeated.
{ pkgs, toolchainLock, rootfs, toolchainId, baseArchive }:
pkgs.dockerTools.buildLayeredImage {
  name = "webslm-toolchain";
  tag = builtins.substring 0 12 toolchainId;
  fromImage = baseArchive;
  created = "@${toString toolchainLock.sourceDateEpoch}";
  extraCommands = ''
    tar --extract --file ${rootfs} --no-same-owner --exclude=./dev --exclude=./proc --exclude=./sys
  '';
  config = {
    User = "1000:1000";
    WorkingDir = "/work";
    Env = pkgs.lib.mapAttrsToList (k: v: "${k}=${v}") (toolchainLock.determinismEnv // {
      MLC_LLM_SOURCE_DIR = "/opt/mlc-llm";
      TVM_HOME = "/opt/tvm";
      EMSDK = "/opt/emsdk";
      EM_CACHE = "/opt/emscripten-cache";
      EM_FROZEN_CACHE = "1";
      PATH = "/opt/venv/bin:/opt/emsdk:/opt/emsdk/upstream/emscripten:/opt/emsdk/node/current/bin:/usr/local/bin:/usr/bin:/bin";
    });
    Labels = { "org.webslm.toolchain.id" = toolchainId; };
  };
}
