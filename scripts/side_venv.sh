# Sourced by the set-up scripts: `side_venv DIR "PINNED DEPS" [uv venv options]` makes DIR a venv on
# .venv's interpreter (torch's compiled extensions are shared with it) whose sys.path ends with
# .venv's site-packages (a .pth file), so it never gets a second torch (6 GB); only the pinned
# packages .venv lacks are installed into it, with --no-deps, and again only when the pins change.
# Sets SIDE_VENV_INSTALLED=1 when it installed something.
side_venv() {
  local dir=$1 deps=$2; shift 2
  local uv=(python3 -m uv) main=.venv/bin/python
  [ -x "$main" ] || { echo "error: $main missing; run scripts/setup.sh first" >&2; exit 1; }
  [ -x "$dir/bin/python" ] || "${uv[@]}" venv -q "$@" --python "$main" "$dir"
  local main_sp side_sp
  main_sp=$("$main" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  side_sp=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$(cd "$main_sp" && pwd -P)" > "$side_sp/_plasticity_main_venv.pth"
  SIDE_VENV_INSTALLED=0
  if [ ! -f "$dir/.plasticity-deps" ] || [ "$(cat "$dir/.plasticity-deps")" != "$deps" ]; then
    # shellcheck disable=SC2086  # the pins are words
    "${uv[@]}" pip install -q -p "$dir/bin/python" --no-deps $deps
    echo "$deps" > "$dir/.plasticity-deps"
    SIDE_VENV_INSTALLED=1
  fi
}
