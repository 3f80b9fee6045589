# Shared by deploy/local/services.sh (one private RabbitMQ node) and deploy/local/cluster.sh
# (three clustered ones): where Debian's rabbitmq-server keeps its scripts, installing it
# when missing, and whether a loopback port answers. Sources deploy/lib/apt.sh first; the
# sourcing script defines `log` and `die`.
# shellcheck shell=bash

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

rabbit_bin() {
  # Debian's /usr/sbin wrappers switch to the `rabbitmq` user; the scripts under
  # /usr/lib/rabbitmq/bin run as the caller, which keeps .local/ ours.
  local d
  for d in /usr/lib/rabbitmq/bin /usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin; do
    [ -x "$d/rabbitmq-server" ] && { echo "$d"; return 0; }
  done
  return 1
}

rabbit_install() {
  rabbit_bin >/dev/null || apt_install rabbitmq-server || die "could not install rabbitmq-server"
  rabbit_bin >/dev/null || die "rabbitmq-server still missing after install"
}
