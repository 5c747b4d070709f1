#!/usr/bin/env sh
# Apply the patches in this folder to the SLURM executor plugin installed for PYTHON
# (default .venv/bin/python). Idempotent: a patch already applied is left alone; a plugin
# version the patch was not written for is an error naming both versions.
#
#   sh cluster/patches/apply.sh [PYTHON]
set -eu
PYTHON=${1:-.venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
SITE=$("$PYTHON" -c 'import os, snakemake_executor_plugin_slurm as m; print(os.path.dirname(os.path.dirname(m.__file__)))')
VERSION=$("$PYTHON" -c 'from importlib.metadata import version; print(version("snakemake-executor-plugin-slurm"))')
PATCH="$HERE/snakemake-executor-plugin-slurm-$VERSION.patch"
if [ ! -f "$PATCH" ]; then
    echo "cluster/patches: no patch for snakemake-executor-plugin-slurm $VERSION" \
         "(patches exist for: $(ls "$HERE" | sed -n 's/^snakemake-executor-plugin-slurm-\(.*\)\.patch$/\1/p' | tr '\n' ' '))." \
         "Check whether $VERSION fixes what cluster/patches/README.md lists, then drop or port the patch." >&2
    exit 1
fi
if patch -p1 -R --dry-run --silent -d "$SITE" <"$PATCH" >/dev/null 2>&1; then
    echo "cluster/patches: $(basename "$PATCH") already applied in $SITE"
    exit 0
fi
patch -p1 --forward --silent -d "$SITE" <"$PATCH"
find "$SITE/snakemake_executor_plugin_slurm" -name '*.pyc' -delete
echo "cluster/patches: applied $(basename "$PATCH") in $SITE"
