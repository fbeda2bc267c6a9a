#!/bin/sh
# pip in the image build, with what the build host passed as BuildKit secrets (mounted for one
# RUN only, never stored in a layer): /run/secrets/pip_conf is used as pip's configuration file,
# the PEM certificates in /run/secrets/pip_ca are added to pip's own CA bundle for this run.
set -eu
venv=${PIP_VENV:-/opt/erofs-converter}  # the venv whose pip runs
if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi
if [ -s /run/secrets/pip_ca ]; then
  bundle=$(mktemp)
  trap 'rm -f "$bundle"' EXIT
  cat "$("$venv/bin/python" -c 'import pip._vendor.certifi as c; print(c.where())')" /run/secrets/pip_ca > "$bundle"
  export PIP_CERT="$bundle"
fi
"$venv/bin/python" -m pip --disable-pip-version-check --no-cache-dir "$@"
