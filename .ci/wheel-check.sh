#!/usr/bin/env bash
# The installed product, as a user gets it: build the wheel, install it in a fresh venv next to
# proxy.py (whose top-level package is also named `proxy`), and run the commands from there,
# outside the checkout, so nothing can come from the repository's folders.
#
# - both packages import side by side, from the venv;
# - the wheel's image recipes and proxy sources are the repository's, byte for byte (the image
#   tags are hashes of them, so the wheel builds the very images a checkout builds);
# - the reaper starts as a module of the installed package;
# - `doctor --fix` builds whatever image is missing from the wheel's own recipes, then `doctor`
#   and the example Expert's `tools` run;
# - tests/wheel, on this same venv and folder: `run` driven by the MCP SDK's stdio client and
#   SIGKILLed mid-run leaves none of its objects; `serve` makes a run, serves a call, deletes it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dev_python="$root/.venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # the example's local skill runs as another uid and reads /expert

"$dev_python" -m pip wheel "$root" --no-deps --quiet --wheel-dir "$work/dist"
python3 -m venv "$work/venv"
venv="$work/venv/bin"
"$venv/pip" install --quiet --disable-pip-version-check "$work"/dist/*.whl proxy.py
cp -r "$root/examples" "$work/examples"
chmod -R a+rX "$work/examples"
cd "$work"

tags='from perstack_sandbox import images; print(images.base_image_name(), images.proxy_image_name(), images.workspace_image_name())'
"$venv/python" - <<'PY'
import proxy, perstack_sandbox, perstack_sandbox_proxy, sys
for module in (proxy, perstack_sandbox, perstack_sandbox_proxy):
    assert module.__file__.startswith(sys.prefix), f"{module.__name__} from {module.__file__}"
print("imports: proxy (proxy.py), perstack_sandbox, perstack_sandbox_proxy side by side")
PY
installed="$("$venv/python" -c "$tags")"
checkout="$(cd "$root" && "$dev_python" -c "$tags")"
[ "$installed" = "$checkout" ] || { echo "image tags differ: wheel $installed, checkout $checkout" >&2; exit 1; }
echo "image recipes: the wheel's tags equal the checkout's ($installed)"

# The reaper runs as `python -m` of its module (engine/_reaper.py): it must run from the wheel.
"$venv/python" -m perstack_sandbox.engine._reaper --help >/dev/null
echo "reaper: runs as a module of the installed package"

"$venv/perstack-sandbox" doctor --fix
"$venv/perstack-sandbox" tools demo -c "$work/examples/perstack.toml"
PERSTACK_SANDBOX_WHEEL_IT=1 PERSTACK_SANDBOX_WHEEL_VENV="$work/venv" PERSTACK_SANDBOX_WHEEL_WORK="$work" \
    "$dev_python" -m pytest "$root/tests/wheel" -q -p no:cacheprovider
echo "wheel check: ok"
