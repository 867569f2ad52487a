#!/bin/sh
# Runs as root (AIB runs scriptUri scripts elevated): no sudo needed.
set -eu
mkdir -p /etc/hello
cat > /etc/hello/app.conf <<CONF
# written by examples/scripts/configure-app.sh
greeting=hello from localbuilder
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
CONF
echo "Image customized by localbuilder (examples/debian-hello.json)" >> /etc/motd
echo "configure-app: wrote /etc/hello/app.conf and extended /etc/motd"
