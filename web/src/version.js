// The web-llm version this bundle contains, injected by build.mjs from docker/toolchain.lock.json.
/* global __WEBLLM_VERSION__ */
export const BUILT_WEBLLM_VERSION = __WEBLLM_VERSION__;
