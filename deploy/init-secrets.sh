#!/usr/bin/env bash
# Makes the secrets deploy/compose.yaml hands to its containers, under deploy/secrets/
# (never committed): random passwords for PostgreSQL, Redis, RabbitMQ and the first admin,
# keel's TOML file with the URLs that carry them, and an Ed25519 signing key. Leaves
# existing files alone, so running it again changes nothing.
set -euo pipefail
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"
umask 0022

random() { head -c 24 /dev/urandom | base64 | tr -d '/+=' ; }
# Writes $2 to $dir/$1 unless the file exists; 0644 because the containers' users (keel is
# 65532) read them through bind mounts, and the 0700 directory keeps everyone else out.
write() {
  [ -e "$dir/$1" ] && return 0
  printf '%s\n' "$2" > "$dir/$1"
  chmod 0644 "$dir/$1"
  echo "made deploy/secrets/$1"
}

pg=$(cat "$dir/postgres-password" 2>/dev/null || random)
redis=$(cat "$dir/redis-password" 2>/dev/null || random)
rabbit=$(random)
[ -e "$dir/rabbitmq.conf" ] && rabbit=$(sed -n 's/^default_pass = //p' "$dir/rabbitmq.conf")
write postgres-password "$pg"
write redis-password "$redis"
write rabbitmq.conf "default_user = keel
default_pass = $rabbit"
write keel.toml "# keel's secret settings (KEEL_CONFIG); environment variables override them.
database_url = \"postgres://keel:$pg@postgres:5432/keel\"
amqp_url = \"amqp://keel:$rabbit@rabbitmq:5672/%2f\"
redis_url = \"redis://:$redis@redis:6379/0\"
bootstrap_admin_password = \"$(random)\""
if [ ! -e "$dir/jwt-ed25519.pem" ]; then
  openssl genpkey -algorithm ed25519 -out "$dir/jwt-ed25519.pem"
  chmod 0644 "$dir/jwt-ed25519.pem"
  echo "made deploy/secrets/jwt-ed25519.pem"
fi
echo "the first admin's password: grep bootstrap_admin_password $dir/keel.toml"
