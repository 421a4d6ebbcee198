//! What to tell the operator when a registration is refused because its
//! distribution port lies outside the pinned range. The setting to change
//! depends on the program that registered, which its node name gives away:
//! RabbitMQ ignores `-kernel inet_dist_listen_min/max` and takes its ports
//! from its own environment variables, and some of its helpers register
//! with a fresh name every time they run.

use super::PortRange;

/// The program behind a node name, as far as the name tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// RabbitMQ's broker (`rabbit`, its default node name).
    RabbitBroker,
    /// RabbitMQ's boot-time duplicate-name check (`rabbit_prelaunch_<pid>`):
    /// a throw-away node started by the broker before its own.
    RabbitPrelaunch,
    /// RabbitMQ's CLI tools (`rabbitmqcli-<id>-<host>`, one per command).
    RabbitCli,
    /// RabbitMQ's epmd monitor runs `erl -sname epmd-starter-<random>` every
    /// 60 s so that OTP's epmd gets started whenever 4369 is free.
    RabbitEpmdStarter,
    /// Any other Erlang or Elixir node.
    Erlang,
}

impl Program {
    /// Recognise the program by its node name (the part before `@`).
    /// RabbitMQ 3.x names (rabbitmq-server's `rabbit_prelaunch_dist`,
    /// `rabbit_nodes_common:ensure_epmd` and the CLI's node name generator):
    /// `rabbit`, `<node>_prelaunch<pid>`, `rabbitmqcli-<id>-<host>`,
    /// `epmd-starter-<n>`.
    pub fn of(name: &str) -> Program {
        if name == "rabbit" {
            Program::RabbitBroker
        } else if name.starts_with("epmd-starter-") {
            Program::RabbitEpmdStarter
        } else if name.starts_with("rabbitmqcli-") {
            Program::RabbitCli
        } else if name.contains("_prelaunch") {
            Program::RabbitPrelaunch
        } else {
            Program::Erlang
        }
    }

    /// A metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Program::RabbitBroker => "rabbitmq",
            Program::RabbitPrelaunch => "rabbitmq_prelaunch",
            Program::RabbitCli => "rabbitmq_cli",
            Program::RabbitEpmdStarter => "rabbitmq_epmd_starter",
            Program::Erlang => "erlang",
        }
    }

    /// A short-lived helper that registers under a fresh name each time it
    /// runs: its refusals are logged once, then only counted.
    pub fn is_helper(self) -> bool {
        matches!(
            self,
            Program::RabbitPrelaunch | Program::RabbitCli | Program::RabbitEpmdStarter
        )
    }

    /// A small index for a bit set of "already logged" programs.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// What to change so that this program registers inside `range`.
    pub fn advice(self, range: PortRange) -> String {
        let PortRange { min, max } = range;
        // The broker takes the first port, the CLI tools the rest.
        let rabbit = if min < max {
            format!(
                "set RABBITMQ_DIST_PORT={min} for the broker and \
                 RABBITMQ_CTL_DIST_PORT_MIN={} RABBITMQ_CTL_DIST_PORT_MAX={max} for its CLI tools",
                min + 1
            )
        } else {
            format!(
                "set RABBITMQ_DIST_PORT={min} for the broker; its CLI tools need ports of their \
                 own (RABBITMQ_CTL_DIST_PORT_MIN/MAX), so widen the range (--dist-port-range)"
            )
        };
        match self {
            Program::RabbitBroker | Program::RabbitPrelaunch => format!(
                "RabbitMQ picks its distribution ports itself and ignores \
                 -kernel inet_dist_listen_min/max: {rabbit}"
            ),
            Program::RabbitCli => format!(
                "RabbitMQ's CLI tools take their port from RABBITMQ_CTL_DIST_PORT_MIN/MAX \
                 (default 35672-35682), not from -kernel flags: {rabbit}, \
                 in the environment where rabbitmqctl runs"
            ),
            Program::RabbitEpmdStarter => "RabbitMQ's epmd monitor starts `erl -sname \
                 epmd-starter-N` every 60 s; its refusal is harmless, but that erl starts \
                 OTP's epmd whenever the EPMD port is free (e.g. while this sidecar restarts): \
                 set ERL_ZFLAGS=\"-start_epmd false\" in the broker's environment, which the \
                 starter inherits"
                .to_string(),
            Program::Erlang => format!(
                "start the node with `-kernel inet_dist_listen_min {min} inet_dist_listen_max \
                 {max}` (ejabberd: FIREWALL_WINDOW={min}-{max}; an Elixir release: in \
                 rel/vm.args.eex or ELIXIR_ERL_OPTIONS)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: PortRange = PortRange {
        min: 4200,
        max: 4210,
    };

    #[test]
    fn rabbitmq_names_are_recognised() {
        assert_eq!(Program::of("rabbit"), Program::RabbitBroker);
        assert_eq!(
            Program::of("rabbit_prelaunch_4242"),
            Program::RabbitPrelaunch
        );
        assert_eq!(
            Program::of("rabbit_prelaunch4242"),
            Program::RabbitPrelaunch
        );
        assert_eq!(Program::of("rabbitmqcli-713-rabbit"), Program::RabbitCli);
        assert_eq!(
            Program::of("epmd-starter-739111939"),
            Program::RabbitEpmdStarter
        );
        assert_eq!(Program::of("ejabberd"), Program::Erlang);
        assert_eq!(Program::of("rabbitmq"), Program::Erlang);
        assert!(Program::RabbitEpmdStarter.is_helper());
        assert!(Program::RabbitCli.is_helper());
        assert!(!Program::RabbitBroker.is_helper());
        assert!(!Program::Erlang.is_helper());
    }

    #[test]
    fn advice_names_what_the_program_reads() {
        let broker = Program::RabbitBroker.advice(R);
        assert!(broker.contains("RABBITMQ_DIST_PORT=4200"), "{broker}");
        assert!(
            broker.contains("RABBITMQ_CTL_DIST_PORT_MIN=4201"),
            "{broker}"
        );
        assert!(
            broker.contains("RABBITMQ_CTL_DIST_PORT_MAX=4210"),
            "{broker}"
        );
        assert!(broker.contains("ignores -kernel"), "{broker}");
        let cli = Program::RabbitCli.advice(R);
        assert!(cli.contains("RABBITMQ_CTL_DIST_PORT_MIN=4201"), "{cli}");
        let starter = Program::RabbitEpmdStarter.advice(R);
        assert!(
            starter.contains("ERL_ZFLAGS=\"-start_epmd false\""),
            "{starter}"
        );
        let other = Program::Erlang.advice(R);
        assert!(
            other.contains("-kernel inet_dist_listen_min 4200 inet_dist_listen_max 4210"),
            "{other}"
        );
        assert!(!other.contains("RABBITMQ"), "{other}");
        let one = Program::RabbitBroker.advice(PortRange {
            min: 4200,
            max: 4200,
        });
        assert!(one.contains("widen the range"), "{one}");
    }

    #[test]
    fn bits_are_distinct() {
        let all = [
            Program::RabbitBroker,
            Program::RabbitPrelaunch,
            Program::RabbitCli,
            Program::RabbitEpmdStarter,
            Program::Erlang,
        ];
        let mut seen = 0u8;
        for p in all {
            assert_eq!(seen & p.bit(), 0);
            seen |= p.bit();
        }
    }
}
