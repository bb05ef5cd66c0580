{
  description = "webslm: the pinned MLC-LLM toolchain, read from docker/toolchain.lock.json";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      toolchainLock = import ./nix/lock.nix { lockFile = ./docker/toolchain.lock.json; };
    in
    {
      lib.toolchainLock = toolchainLock;
      devShells.${system}.default = import ./nix/devshell.nix { inherit pkgs toolchainLock; };
      # nix build .#toolchain-image --impure (reads the exported rootfs, the base archive that
      # `webslm toolchain check` names, and the ID):
      #   WEBSLM_ROOTFS=/abs/rootfs.tar WEBSLM_BASE_ARCHIVE=/abs/base.tar \
      #   WEBSLM_TOOLCHAIN_ID=$(webslm toolchain id)
      packages.${system}.toolchain-image = import ./nix/image.nix {
        inherit pkgs toolchainLock;
        rootfs = /. + builtins.getEnv "WEBSLM_ROOTFS";
        baseArchive = /. + builtins.getEnv "WEBSLM_BASE_ARCHIVE";
        toolchainId = builtins.getEnv "WEBSLM_TOOLCHAIN_ID";
      };
    };
}
