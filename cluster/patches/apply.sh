#!/usr/bin/env sh
# Apply the patches in this folder to the packages installed for PYTHON (default
# .venv/bin/python). A patch is named DIST-VERSION.patch (DIST: the distribution on the package
# index), with further fixes to the same version as DIST-VERSION--NAME.patch (applied after it,
# one file per fix, so that a venv patched earlier only gets the new ones); paths are relative
# to site-packages. Idempotent: a patch already applied is left alone; an installed version no
# patch was written for is an error naming both versions.
#
#   sh cluster/patches/apply.sh [PYTHON]
set -eu
PYTHON=${1:-.venv/bin/python}
HERE=$(cd "$(dirname "$0")" && pwd)
SITE=$("$PYTHON" -c 'import os, snakemake_executor_plugin_slurm as m; print(os.path.dirname(os.path.dirname(m.__file__)))')
for DIST in snakemake snakemake-executor-plugin-slurm snakemake-interface-executor-plugins; do
    VERSION=$("$PYTHON" -c "from importlib.metadata import version; print(version('$DIST'))")
    PATCH="$HERE/$DIST-$VERSION.patch"
    if [ ! -f "$PATCH" ]; then
        echo "cluster/patches: no patch for $DIST $VERSION" \
             "(patches exist for: $(ls "$HERE" | sed -n "s/^$DIST-\([0-9][^-]*\)\.patch$/\1/p" | tr '\n' ' '))." \
             "Check whether $VERSION fixes what cluster/patches/README.md lists, then drop or port the patch." >&2
        exit 1
    fi
    for PATCH in "$PATCH" "$HERE/$DIST-$VERSION"--*.patch; do
        [ -f "$PATCH" ] || continue  # no DIST-VERSION--NAME.patch: the glob stays unexpanded
        if patch -p1 -R --dry-run --silent -d "$SITE" <"$PATCH" >/dev/null 2>&1; then
            echo "cluster/patches: $(basename "$PATCH") already applied in $SITE"
            continue
        fi
        patch -p1 --forward --silent -d "$SITE" <"$PATCH"
        PACKAGE=$(echo "$DIST" | tr - _)
        find "$SITE/$PACKAGE" -name '*.pyc' -delete
        "$PYTHON" -m compileall -q "$SITE/$PACKAGE" >/dev/null  # where bytecode is not written
        echo "cluster/patches: applied $(basename "$PATCH") in $SITE"
    done
done
