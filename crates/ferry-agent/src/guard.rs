//! The local guard: only root on the node may use the tunnel.
//!
//! While the tunnel is up, anything on the node that connects to the server's tunnel
//! address gets the node's documents and secrets (the server identifies the node by the
//! packet's source address), and could phone home early. So the agent installs an
//! nftables table of its own that drops every packet leaving through the tunnel
//! interface from a socket not owned by uid 0:
//!
//! ```text
//! table inet ferry_agent_IFACE {
//!     chain output {
//!         type filter hook output priority filter; policy accept;
//!         oifname "IFACE" meta skuid != 0 drop
//!     }
//! }
//! ```
//!
//! Why nftables and not a policy routing rule (`ip rule ... uidrange 1-4294967294
//! prohibit`): a socket bound to the interface (`SO_BINDTODEVICE`, which unprivileged
//! users may set since Linux 5.7; `curl --interface IFACE`) skips a failed route lookup
//! and is sent out of the interface anyway; the output hook sees every packet,
//! whatever route it took. Root (the agent, cloud-init) is not matched; packets the
//! kernel sends without a socket (TCP resets) are not matched either.
//!
//! Tables are written over netlink (`NETLINK_NETFILTER`, one atomic batch), like the
//! rest of the agent's network setup: nothing is forked.

use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, Cmp, DataAttribute, Expressions, Hook, Immediate, InetHookNumber, Meta, MetaKey, NfTablesMessage,
    Operator, Register, RuleAttribute, RuleMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const IFNAMSIZ: usize = 16;
const CHAIN: &str = "output";
const NLM_F_APPEND: u16 = 0x800;
/// How long the kernel gets to answer a batch (it answers at once; this only bounds a
/// kernel that never does).
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// The nftables table that guards `interface`.
pub fn table_name(interface: &str) -> String {
    format!("ferry_agent_{interface}")
}

/// Installs (or replaces, atomically) the guard of `interface`; returns the table's name.
/// The interface need not exist yet: the rule matches its name.
pub async fn install(interface: &str) -> Result<String, String> {
    let table = table_name(interface);
    let batch = install_batch(&table, interface);
    run_batch(batch).await.map_err(|e| {
        format!(
            "cannot install the nftables rule that keeps the tunnel {interface} to root ({e}): the kernel \
             needs nf_tables (`modprobe nf_tables`; CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET) and the agent \
             must run as root"
        )
    })?;
    tracing::info!(%interface, %table, "only root can use the tunnel (nftables table {table})");
    Ok(table)
}

/// Removes a guard table; a missing one is fine.
pub async fn remove(table: &str) -> Result<(), String> {
    // "add table; delete table" in one batch: deletes it whether or not it existed.
    let messages = vec![
        table_msg(NfTablesMessage::NewTable, table, NLM_F_CREATE),
        table_msg(NfTablesMessage::DeleteTable, table, 0),
    ];
    run_batch(messages).await.map_err(|e| {
        format!("cannot remove the nftables table {table} ({e}): remove it with `nft delete table inet {table}`")
    })?;
    tracing::info!(%table, "tunnel guard removed");
    Ok(())
}

fn header(family: NetfilterProtoFamily, res_id: u16) -> NetfilterHeader {
    NetfilterHeader::new(family, 0, res_id)
}

fn message(inner: NfTablesMessage, flags: u16) -> NetlinkMessage<NetfilterMessage> {
    let mut m = NetlinkMessage::from(NetfilterMessage::new(header(NetfilterProtoFamily::Inet, 0), inner));
    m.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    m
}

fn table_msg(kind: fn(TableMessage) -> NfTablesMessage, table: &str, flags: u16) -> NetlinkMessage<NetfilterMessage> {
    message(kind(TableMessage { attributes: vec![TableAttribute::Name(table.to_string())] }), flags)
}

/// Replace-or-create: `add table; delete table; add table {chain, rule}` as one transaction.
fn install_batch(table: &str, interface: &str) -> Vec<NetlinkMessage<NetfilterMessage>> {
    let chain = NfTablesMessage::NewChain(netlink_packet_netfilter::nftables::ChainMessage {
        attributes: vec![
            ChainAttribute::Table(table.to_string()),
            ChainAttribute::Name(CHAIN.to_string()),
            ChainAttribute::Hook(vec![Hook::Number(InetHookNumber::LocalOut.into()), Hook::Priority(0)]),
            ChainAttribute::Policy(NF_ACCEPT),
            ChainAttribute::Type("filter".to_string()),
        ],
    });
    let rule = NfTablesMessage::NewRule(RuleMessage {
        attributes: vec![
            RuleAttribute::Table(table.to_string()),
            RuleAttribute::Chain(CHAIN.to_string()),
            RuleAttribute::Expressions(drop_non_root_through(interface)),
        ],
    });
    vec![
        table_msg(NfTablesMessage::NewTable, table, NLM_F_CREATE),
        table_msg(NfTablesMessage::DeleteTable, table, 0),
        table_msg(NfTablesMessage::NewTable, table, NLM_F_CREATE),
        message(chain, NLM_F_CREATE),
        message(rule, NLM_F_CREATE | NLM_F_APPEND),
    ]
}

/// `oifname "IFACE" meta skuid != 0 drop`.
fn drop_non_root_through(
    interface: &str,
) -> Vec<netlink_packet_netfilter::nftables::ListAttribute<netlink_packet_netfilter::nftables::ExpressionAttribute>> {
    let mut name = interface.as_bytes().to_vec();
    name.resize(IFNAMSIZ, 0);
    let load = |key| Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(Register::Reg1)]).into();
    let cmp = |op, data: Vec<u8>| {
        Expressions::Cmp(vec![Cmp::SourceRegister(Register::Reg1), Cmp::Op(op), Cmp::Data(DataAttribute::Value(data))])
            .into()
    };
    vec![
        load(MetaKey::Oifname),
        cmp(Operator::Equal, name),
        load(MetaKey::SocketUserId),
        cmp(Operator::NotEqual, 0u32.to_ne_bytes().to_vec()),
        Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Verdict),
            Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(Verdict::Other(NF_DROP))])),
        ])
        .into(),
    ]
}

/// Sends `messages` between batch begin and end; succeeds once every one is acknowledged.
async fn run_batch(messages: Vec<NetlinkMessage<NetfilterMessage>>) -> Result<(), String> {
    let work = tokio::task::spawn_blocking(move || send_batch(messages));
    match tokio::time::timeout(ANSWER_LIMIT, work).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("the netlink task failed: {e}")),
        Err(_) => Err(format!("no answer from the kernel within {} s", ANSWER_LIMIT.as_secs())),
    }
}

fn control(inner: ControlMessage, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let mut m =
        NetlinkMessage::from(NetfilterMessage::new(header(NetfilterProtoFamily::Unspec, NFNL_SUBSYS_NFTABLES), inner));
    m.header.flags = NLM_F_REQUEST;
    m.header.sequence_number = seq;
    m
}

fn send_batch(messages: Vec<NetlinkMessage<NetfilterMessage>>) -> Result<(), String> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| format!("netlink socket: {e}"))?;
    socket.bind_auto().map_err(|e| format!("netlink bind: {e}"))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(|e| format!("netlink connect: {e}"))?;
    let mut batch = vec![control(ControlMessage::BatchBegin, 1)];
    let mut expected = Vec::new();
    for (seq, mut m) in (2u32..).zip(messages) {
        m.header.sequence_number = seq;
        expected.push(seq);
        batch.push(m);
    }
    batch.push(control(ControlMessage::BatchEnd, expected.last().copied().unwrap_or(1) + 1));
    let mut bytes = Vec::new();
    for mut m in batch {
        m.finalize();
        let start = bytes.len();
        bytes.resize(start + m.buffer_len(), 0);
        m.serialize(&mut bytes[start..]);
    }
    socket.send(&bytes, 0).map_err(|e| format!("netlink send: {e}"))?;
    while !expected.is_empty() {
        let (reply, _) = socket.recv_from_full().map_err(|e| format!("netlink receive: {e}"))?;
        let mut offset = 0;
        while offset < reply.len() {
            let m = NetlinkMessage::<NetfilterMessage>::deserialize(&reply[offset..])
                .map_err(|e| format!("cannot parse the kernel's answer: {e}"))?;
            let len = m.header.length as usize;
            if let NetlinkPayload::Error(err) = &m.payload {
                if let Some(code) = err.code {
                    return Err(std::io::Error::from_raw_os_error(-code.get()).to_string());
                }
                expected.retain(|s| *s != m.header.sequence_number);
            }
            if len == 0 {
                break;
            }
            offset += len.next_multiple_of(4);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;

    fn headers(batch: &[NetlinkMessage<NetfilterMessage>]) -> Vec<NetlinkHeader> {
        batch
            .iter()
            .map(|m| {
                let mut m = m.clone();
                m.finalize();
                m.header
            })
            .collect()
    }

    #[test]
    fn table_names_fit_nftables() {
        assert_eq!(table_name("ferry-node0"), "ferry_agent_ferry-node0");
        // The longest interface name (15) stays under the old 32-byte table name limit.
        assert!(table_name("123456789012345").len() < 32);
    }

    #[test]
    fn the_batch_replaces_the_table_and_drops_non_root_traffic_of_the_interface() {
        let batch = install_batch("t", "wg0");
        let kinds: Vec<u16> = headers(&batch).iter().map(|h| h.message_type & 0xff).collect();
        // NEWTABLE, DELTABLE, NEWTABLE, NEWCHAIN, NEWRULE.
        assert_eq!(kinds, [0, 2, 0, 3, 6]);
        assert!(headers(&batch).iter().all(|h| h.flags & NLM_F_ACK != 0 && h.message_type >> 8 == 10));
        let exprs = drop_non_root_through("wg0");
        assert_eq!(exprs.len(), 5);
        let text = format!("{exprs:?}");
        assert!(text.contains("Oifname") && text.contains("SocketUserId") && text.contains("NotEqual"), "{text}");
        assert!(text.contains(&format!("{:?}", b"wg0\0\0\0\0\0\0\0\0\0\0\0\0\0".to_vec())), "{text}");
    }
}
