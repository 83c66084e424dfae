#!/bin/sh
# with-secrets COMMAND [ARG...]: for every environment variable NAME_FILE that names a readable
# file, export NAME with the file's content (trailing newline dropped), then exec COMMAND.
# Secrets thus arrive as files (compose `secrets:`, /run/secrets/...) and never sit in the
# compose file, the image or `docker inspect` output. Installed in the image as /opt/venv/bin/with-secrets.
set -eu
for pair in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=.*/\1/p'); do
    file=$(printenv "${pair}_FILE")
    if [ ! -r "$file" ]; then
        echo "with-secrets: ${pair}_FILE=$file is not a readable file" >&2
        exit 1
    fi
    value=$(cat "$file")
    export "$pair=$value"
    unset "${pair}_FILE"
done
exec "$@"
