# The toolchain image through dockerTools: a layered image over the lock's base image (pulled by
# digest) and the root filesystem of the Dockerfile's `toolchain` stage (`rootfs`, a tarball the
# Docker build exports), with the same config, labels and determinism settings. Every pin comes
# from nix/lock.nix; nothing is repeated here.
{ pkgs, toolchainLock, rootfs, toolchainId, baseImageNarHash }:
let
  inherit (toolchainLock) lock;
  base = pkgs.dockerTools.pullImage {
    imageName = builtins.head (builtins.split "[:@]" (pkgs.lib.removePrefix "docker.io/" lock.base_image.ref));
    imageDigest = lock.base_image.digest;
    sha256 = baseImageNarHash;
    finalImageTag = "webslm-base";
  };
in
pkgs.dockerTools.buildLayeredImage {
  name = "webslm-toolchain";
  tag = builtins.substring 0 12 toolchainId;
  fromImage = base;
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
      PATH = "/opt/venv/bin:/opt/emsdk:/opt/emsdk/upstream/emscripten:/opt/emsdk/node/current/bin:/usr/local/bin:/usr/bin:/bin";
    });
    Labels = { "org.webslm.toolchain.id" = toolchainId; };
  };
}
