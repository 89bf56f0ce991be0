#!/usr/bin/env bash
# Prints a directory to use as VULKAN_SDK when building `--features vulkan`, or nothing when the
# system's Vulkan headers are recent enough.
#
# ggml's Vulkan backend uses VK_EXT_layer_settings, which Debian 12's Vulkan headers (1.3.239) lack:
# its build fails there ("'LayerSettingEXT' is not a member of 'vk'"). In that
# case this fetches Debian 13's libvulkan-dev and spirv-headers packages with apt, using a private
# package list under target/ (nothing is installed system-wide), and unpacks their headers into
# target/vulkan-sdk/ next to a link to the system's Vulkan loader (its ABI is stable; the headers
# only need to know the newer structures). The shaders are still compiled by the system's glslc.
set -euo pipefail
cd "$(dirname "$0")/.."
if grep -q VK_EXT_LAYER_SETTINGS_EXTENSION_NAME /usr/include/vulkan/vulkan_core.h 2>/dev/null; then
    exit 0
fi
sdk="$PWD/target/vulkan-sdk"
if [ -f "$sdk/include/vulkan/vulkan_core.h" ] && grep -q VK_EXT_LAYER_SETTINGS_EXTENSION_NAME "$sdk/include/vulkan/vulkan_core.h"; then
    echo "$sdk"
    exit 0
fi
loader=$(ls /usr/lib/*-linux-gnu/libvulkan.so.1 /usr/lib64/libvulkan.so.1 2>/dev/null | head -1 || true)
[ -n "$loader" ] || { echo "no Vulkan loader (libvulkan.so.1): install libvulkan-dev" >&2; exit 1; }
apt_dir="$PWD/target/vulkan-apt"
rm -rf "$apt_dir" "$sdk"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$sdk/lib" "$sdk/share"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    > "$apt_dir/sources.list"
opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt_dir/lists"
      -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1)
echo "the system Vulkan headers lack VK_EXT_layer_settings: fetching Debian 13's into $sdk" >&2
apt-get "${opts[@]}" update -qq >&2
(cd "$apt_dir/debs" && apt-get "${opts[@]}" download libvulkan-dev spirv-headers >&2)
for d in "$apt_dir"/debs/*.deb; do dpkg-deb -x "$d" "$apt_dir/x"; done
mv "$apt_dir/x/usr/include" "$sdk/include"
mv "$apt_dir/x/usr/share/cmake" "$sdk/share/cmake"
ln -s "$loader" "$sdk/lib/libvulkan.so"
rm -rf "$apt_dir"
echo "$sdk"
