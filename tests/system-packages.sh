#!/usr/bin/env bash
# Debian packages some tests use: real Fashion-MNIST files (dataset-fashion-mnist) and a real
# Slurm (slurm-wlm, munge) for the Slurm executor's tests. Installed only when this runs as
# root with apt-get; elsewhere, or if the install fails, those tests skip with the reason.
# Never fails: the test run decides what it can test.
packages=(dataset-fashion-mnist slurm-wlm munge)
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system packages not installed (needs root and apt-get): ${packages[*]}; their tests skip" >&2
    exit 0
fi
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} with apt-get" >&2
{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null \
    || echo "apt-get could not install ${missing[*]}; their tests will skip" >&2
exit 0
