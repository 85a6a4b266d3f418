#!/usr/bin/env bash
# Set up storebot on this machine and deploy one bot with the admin CLI (SQLite).
#
#   sudo bash infra/quickstart.sh --token <token from @BotFather> --owner <your Telegram id>
#
# Idempotent; re-run it after fixing whatever it stops at. Steps: Debian packages
# (docker.io, iptables, python3-venv) -> a running Docker engine -> .venv with storebot
# -> .env (created from .env.example with a fresh STOREBOT_SECRET_KEY; you fill in the
# rest) -> database migration -> Traefik (infra/docker-compose.yml) unless its probe
# entrypoint already answers -> the nullclawd image -> `storebot admin deploy` -> the
# LLM meter (`storebot meter`, in the background) unless it already answers.
# Any other admin command works too: bash infra/quickstart.sh list
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'quickstart: %s\n' "$*" >&2; exit 1; }

[[ $# -gt 0 ]] || die "usage: bash infra/quickstart.sh --token TOKEN --owner TELEGRAM_ID (or any 'storebot admin' command)"
[[ $1 == -* ]] && set -- deploy "$@"

need_pkgs=()
command -v dockerd >/dev/null || need_pkgs+=(docker.io)
command -v iptables >/dev/null || [[ -x /usr/sbin/iptables ]] || need_pkgs+=(iptables)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_pkgs+=(python3-venv)
if ((${#need_pkgs[@]})); then
  ((EUID == 0)) || die "run as root: missing packages ${need_pkgs[*]}"
  say "installing ${need_pkgs[*]}"
  apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq -y install "${need_pkgs[@]}" >/dev/null
fi

if ! timeout 10 docker info >/dev/null 2>&1; then
  say "starting the Docker engine"
  if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null; then :; else
    setsid dockerd </dev/null >/var/log/storebot-dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 1; done
  timeout 10 docker info >/dev/null 2>&1 || die "Docker does not start (see /var/log/storebot-dockerd.log)"
fi

if [[ ! -x .venv/bin/storebot ]]; then
  say "installing storebot into .venv"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q -e .
fi

if [[ ! -f .env ]]; then
  key=$(.venv/bin/python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')
  sed "s|^STOREBOT_SECRET_KEY=.*|STOREBOT_SECRET_KEY=$key|" .env.example >.env
  chmod 600 .env
  say "created .env with a fresh STOREBOT_SECRET_KEY"
fi
# storebot checks every setting and names what is missing or still a placeholder
.venv/bin/storebot migrate >/dev/null || die "edit .env as listed above, then run this again"
setting() { .venv/bin/python -c "from storebot.settings import load_settings; print(load_settings().$1)"; }

probe=$(setting HEALTH_PROBE_URL)
# any HTTP answer on the probe entrypoint means Traefik runs
if ! .venv/bin/python -c "import httpx; httpx.get('$probe/', timeout=2)" 2>/dev/null; then
  docker compose version >/dev/null 2>&1 ||
    die "Traefik is not running and Docker Compose v2 is missing: install docker-compose-plugin, or start Traefik as in infra/docker-compose.yml"
  say "starting Traefik (needs ACME_EMAIL in .env for certificates)"
  docker compose --env-file .env -f infra/docker-compose.yml up -d traefik
fi

image=$(setting NULLCLAW_IMAGE)
docker image inspect "$image" >/dev/null 2>&1 || { say "pulling $image"; docker pull "$image"; }

.venv/bin/storebot check
.venv/bin/storebot admin "$@"
[[ $1 == deploy ]] || exit 0

# The LLM meter, where the bots reach it (LLM_METER_URL: the bot network's gateway,
# which exists now that a bot is deployed), unless it already answers there.
meter_host=$(.venv/bin/python -c "from urllib.parse import urlsplit; from storebot.settings import load_settings; print(urlsplit(load_settings().LLM_METER_URL).hostname)")
meter_port=$(.venv/bin/python -c "from urllib.parse import urlsplit; from storebot.settings import load_settings; print(urlsplit(load_settings().LLM_METER_URL).port or 80)")
if ! .venv/bin/python -c "import httpx; httpx.get('http://$meter_host:$meter_port/healthz', timeout=2).raise_for_status()" 2>/dev/null; then
  say "starting the LLM meter on $meter_host:$meter_port (log: /var/log/storebot-meter.log)"
  METER_HOST=$meter_host METER_PORT=$meter_port setsid .venv/bin/storebot meter </dev/null >>/var/log/storebot-meter.log 2>&1 &
fi
say "the bot answers once it has LLM credit: .venv/bin/storebot admin credit <id> 5 --note 'first credit'"
