# The toolchain lock as Nix values: the same pins, read from docker/toolchain.lock.json with
# builtins.fromJSON. Needs no nixpkgs, so CI evaluates it offline with nix-instantiate.
{ lockFile ? ../docker/toolchain.lock.json }:
let
  lock = builtins.fromJSON (builtins.readFile lockFile);
  isPlaceholder = v: builtins.isString v && builtins.substring 0 12 v == "PLACEHOLDER:";
  pinned = packages:
    builtins.concatStringsSep " "
      (map (name: "${name}=${packages.${name}}") (builtins.attrNames packages));
  placeholdersIn = path: v:
    if isPlaceholder v then [ path ]
    else if builtins.isAttrs v then
      builtins.concatLists (map (k: placeholdersIn (if path == "" then k else "${path}.${k}") v.${k})
        (builtins.attrNames v))
    else if builtins.isList v then
      builtins.concatLists (builtins.genList
        (i: placeholdersIn "${path}[${toString i}]" (builtins.elemAt v i)) (builtins.length v))
    else [ ];
in
rec {
  inherit lock isPlaceholder;
  sourceDateEpoch = lock.source_date_epoch;
  webllmVersion = lock.webllm.version;
  placeholders = placeholdersIn "" lock;
  # What defines the base root filesystem (webslm.baseimage.BaseRecipe): mmdebstrap of this
  # variant and suite from the snapshot archive, with SOURCE_DATE_EPOCH. No registry image.
  baseRecipe = {
    suite = lock.debian.suite;
    archive = lock.debian.archive;
    security_archive = lock.debian.security_archive;
    variant = lock.debian.base_variant;
    source_date_epoch = sourceDateEpoch;
  };
  # The Docker build arguments, exactly as webslm.toolchain.build_args writes them (bar the ID
  # and BASE_IMAGE, the local tag of the base; both hash files and are computed by webslm).
  buildArgs = {
    DEBIAN_ARCHIVE = lock.debian.archive;
    DEBIAN_SECURITY_ARCHIVE = lock.debian.security_archive;
    DEBIAN_SUITE = lock.debian.suite;
    APT_PACKAGES = pinned lock.debian.packages;
    RUNTIME_PACKAGES = pinned lock.debian.runtime_packages;
    LLVM_MAJOR = toString lock.llvm.major;
    SOURCE_DATE_EPOCH = toString sourceDateEpoch;
    RUST_TOOLCHAIN = lock.rust.toolchain;
    RUSTUP_INIT_URL = lock.rust.installer_url;
    RUSTUP_INIT_SHA256 = lock.rust.installer_sha256;
    EMSCRIPTEN_VERSION = lock.emscripten.version;
    EMSDK_REPO = lock.emscripten.emsdk_repo;
    EMSDK_COMMIT = lock.emscripten.emsdk_commit;
  };
  determinismEnv = {
    SOURCE_DATE_EPOCH = toString sourceDateEpoch;
    TZ = "UTC";
    LC_ALL = "C.UTF-8";
    PYTHONHASHSEED = "0";
  };
}
