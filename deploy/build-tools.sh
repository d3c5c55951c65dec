# Shell functions shared by deploy/demo and tests/run: what building mapek needs from the
# machine, installed from Debian's packages when missing and we may. Source this file; it
# defines functions only. Set SAY_AS to the name messages should start with.

say() { printf '%s: %s\n' "${SAY_AS:-mapek}" "$*" >&2; }

# Installs Debian packages when we are root on a machine with apt-get; fails otherwise.
apt_install() {
  command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]] || return 1
  say "installing Debian's $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; }
}

# True when libclang itself (not only libclang-cpp) is installed where bindgen looks for it.
have_libclang() {
  local f
  for f in ${LIBCLANG_PATH:+"$LIBCLANG_PATH"/libclang*.so*} \
    /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
    /usr/lib/*/libclang.so* /usr/lib/*/libclang-[0-9]*.so*; do
    [[ -e "$f" ]] && return 0
  done
  return 1
}

# liboqs (the ML-DSA signatures of decisions) is built from source by the oqs crate: it needs
# cmake, and clang with libclang for its bindings. Without them the build fails minutes in,
# so they are checked (and installed when we may) before cargo starts.
ensure_build_tools() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  have_libclang || missing+=(libclang-dev)
  [[ ${#missing[@]} -eq 0 ]] && return
  apt_install "${missing[@]}" && return
  say "missing ${missing[*]} (to build liboqs): install them (Debian: apt-get install cmake clang libclang-dev)"
  exit 1
}

# Rust is the one thing these scripts do not install.
ensure_cargo() {
  command -v cargo >/dev/null 2>&1 && cargo --version >/dev/null 2>&1 && return
  say "cargo does not run: install Rust 1.95 or newer (https://rustup.rs), then try again"
  exit 1
}
