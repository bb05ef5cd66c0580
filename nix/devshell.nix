# Host-side tools for webslm: Python with the Docker SDK and Invoke, the Docker CLI, hadolint,
# git. The compilers live in the toolchain image, not here.
{ pkgs, toolchainLock }:
pkgs.mkShell {
  packages = [
    (pkgs.python311.withPackages (ps: [ ps.docker ps.invoke ps.huggingface-hub ps.rich ps.pytest ]))
    pkgs.docker-client
    pkgs.hadolint
    pkgs.git
    pkgs.nodejs_20
  ];
  inherit (toolchainLock.determinismEnv) SOURCE_DATE_EPOCH TZ PYTHONHASHSEED;
  WEBSLM_WEBLLM_VERSION = toolchainLock.webllmVersion;
}
