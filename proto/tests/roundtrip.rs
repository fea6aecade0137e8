//! Property tests: any packet a protocol can express encodes to exactly
//! `encoded_len` bytes and decodes back to itself.

mod common;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tidemq_proto::mqtt::ReasonCode::{self, *};
use tidemq_proto::mqtt::*;

// Reason codes each packet may carry in 5.0, restated from the spec rather
// than taken from the codec so the test checks the codec's lists too.
const CONNACK: &[ReasonCode] = &[
    Success,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    BadUserNameOrPassword,
    NotAuthorized,
    ServerUnavailable,
    ServerBusy,
    Banned,
    BadAuthenticationMethod,
    TopicNameInvalid,
    PacketTooLarge,
    QuotaExceeded,
    PayloadFormatInvalid,
    RetainNotSupported,
    QoSNotSupported,
    UseAnotherServer,
    ServerMoved,
    ConnectionRateExceeded,
];
const CONNACK_V3: &[ReasonCode] = &[
    Success,
    UnsupportedProtocolVersion,
    ClientIdentifierNotValid,
    ServerUnavailable,
    BadUserNameOrPassword,
    NotAuthorized,
];
const PUBACK: &[ReasonCode] = &[
    Success,
    NoMatchingSubscribers,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicNameInvalid,
    PacketIdentifierInUse,
    QuotaExceeded,
    PayloadFormatInvalid,
];
const PUBREL: &[ReasonCode] = &[Success, PacketIdentifierNotFound];
const SUBACK: &[ReasonCode] = &[
    Success,
    GrantedQoS1,
    GrantedQoS2,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicFilterInvalid,
    PacketIdentifierInUse,
    QuotaExceeded,
    SharedSubscriptionsNotSupported,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];
const SUBACK_V3: &[ReasonCode] = &[Success, GrantedQoS1, GrantedQoS2, UnspecifiedError];
const UNSUBACK: &[ReasonCode] = &[
    Success,
    NoSubscriptionExisted,
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicFilterInvalid,
    PacketIdentifierInUse,
];
const DISCONNECT: &[ReasonCode] = &[
    Success,
    DisconnectWithWillMessage,
    UnspecifiedError,
    MalformedPacket,
    ProtocolError,
    ImplementationSpecificError,
    NotAuthorized,
    ServerBusy,
    ServerShuttingDown,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicFilterInvalid,
    TopicNameInvalid,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    PacketTooLarge,
    MessageRateTooHigh,
    QuotaExceeded,
    AdministrativeAction,
    PayloadFormatInvalid,
    RetainNotSupported,
    QoSNotSupported,
    UseAnotherServer,
    ServerMoved,
    SharedSubscriptionsNotSupported,
    ConnectionRateExceeded,
    MaximumConnectTime,
    SubscriptionIdentifiersNotSupported,
    WildcardSubscriptionsNotSupported,
];
const AUTH: &[ReasonCode] = &[Success, ContinueAuthentication, ReAuthenticate];

fn reason(list: &'static [ReasonCode]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(list)
}

/// Any string the codec accepts: no U+0000, multi-byte characters included.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn user() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

fn topic() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9$ é/_-]{1,24}"
}

fn plain_filter() -> impl Strategy<Value = String> {
    (vec("[a-z0-9$]{0,5}|\\+", 1..5), any::<bool>()).prop_map(|(mut levels, hash)| {
        if hash {
            levels.push("#".into());
        }
        // A filter is never empty, though its levels may be.
        let filter = levels.join("/");
        if filter.is_empty() {
            "e".into()
        } else {
            filter
        }
    })
}

fn filter() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => plain_filter(),
        1 => ("[a-z0-9_]{1,6}", plain_filter()).prop_map(|(g, f)| format!("$share/{g}/{f}")),
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn sub_id() -> impl Strategy<Value = u32> {
    1..=268_435_455u32
}

/// `Some` strategy output only for 5.0, so older protocols see defaults.
fn v5_only<T: Default + std::fmt::Debug + Clone + 'static>(
    p: Protocol,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if p.is_v5() {
        s.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
            option::of(1..=u32::MAX),
        ),
        (
            option::of(any::<u16>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        ),
        (user(), option::of(text()), option::of(bin())),
    )
        .prop_map(
            |((sei, rm, mps), (tam, rri, rpi), (up, am, ad))| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_method: am,
                authentication_data: ad,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(0..=1u8),
            option::of(any::<u32>()),
        ),
        (
            option::of(text()),
            option::of(topic()),
            option::of(bin()),
            user(),
        ),
    )
        .prop_map(|((wdi, pfi, mei), (ct, rt, cd, up))| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn connect(p: Protocol) -> impl Strategy<Value = Packet> {
    let will = option::of((
        topic(),
        bin(),
        qos(),
        any::<bool>(),
        v5_only(p, will_properties()),
    ));
    (
        (any::<bool>(), any::<u16>(), text(), will),
        (
            option::of(text()),
            option::of(bin()),
            v5_only(p, connect_properties()),
        ),
    )
        .prop_map(
            move |(
                (clean_start, keep_alive, client_id, will),
                (username, password, properties),
            )| {
                // Before 5.0 a password needs a user name.
                let username = match (&username, &password) {
                    (None, Some(_)) if !p.is_v5() => Some(String::new()),
                    _ => username,
                };
                Packet::Connect(Connect {
                    protocol: p,
                    clean_start,
                    keep_alive,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, properties)| LastWill {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties,
                    }),
                    username,
                    password,
                    properties,
                })
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
            option::of(0..=1u8),
        ),
        (
            option::of(any::<bool>()),
            option::of(1..=u32::MAX),
            option::of(text()),
        ),
        (option::of(any::<u16>()), option::of(text()), user()),
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
        ),
        (
            option::of(any::<u16>()),
            option::of(text()),
            option::of(text()),
        ),
        (option::of(text()), option::of(bin())),
    )
        .prop_map(|(a, b, c, d, e, f)| ConnAckProperties {
            session_expiry_interval: a.0,
            receive_maximum: a.1,
            maximum_qos: a.2,
            retain_available: b.0,
            maximum_packet_size: b.1,
            assigned_client_identifier: b.2,
            topic_alias_maximum: c.0,
            reason_string: c.1,
            user_properties: c.2,
            wildcard_subscription_available: d.0,
            subscription_identifiers_available: d.1,
            shared_subscription_available: d.2,
            server_keep_alive: e.0,
            response_information: e.1,
            server_reference: e.2,
            authentication_method: f.0,
            authentication_data: f.1,
        })
}

fn connack(p: Protocol) -> impl Strategy<Value = Packet> {
    let list = if p.is_v5() { CONNACK } else { CONNACK_V3 };
    (
        any::<bool>(),
        reason(list),
        v5_only(p, connack_properties()),
    )
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties,
            })
        })
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        (
            option::of(0..=1u8),
            option::of(any::<u32>()),
            option::of(1..=u16::MAX),
        ),
        (option::of(topic()), option::of(bin()), user()),
        (vec(sub_id(), 0..3), option::of(text())),
    )
        .prop_map(
            |((pfi, mei, ta), (rt, cd, up), (si, ct))| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                topic_alias: ta,
                response_topic: rt,
                correlation_data: cd,
                user_properties: up,
                subscription_identifiers: si,
                content_type: ct,
            },
        )
}

fn publish(p: Protocol) -> impl Strategy<Value = Packet> {
    (
        (qos(), any::<bool>(), any::<bool>(), packet_id()),
        (topic(), v5_only(p, publish_properties()), bin()),
    )
        .prop_map(
            move |((qos, dup, retain, id), (topic, properties, payload))| {
                let at_most_once = qos == QoS::AtMostOnce;
                // An alias may stand in for the topic in 5.0.
                let topic = if properties.topic_alias.is_some() && dup {
                    String::new()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic,
                    packet_id: (!at_most_once).then_some(id),
                    properties,
                    payload,
                })
            },
        )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text()), user()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn pub_response(p: Protocol, list: &'static [ReasonCode]) -> BoxedStrategy<PubResponse> {
    if !p.is_v5() {
        return packet_id().prop_map(PubResponse::success).boxed();
    }
    (packet_id(), reason(list), ack_properties())
        .prop_map(|(packet_id, reason, properties)| PubResponse {
            packet_id,
            reason,
            properties,
        })
        .boxed()
}

fn options(p: Protocol) -> BoxedStrategy<SubscriptionOptions> {
    if !p.is_v5() {
        return qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..Default::default()
            })
            .boxed();
    }
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendIfNew),
        Just(RetainHandling::DoNotSend)
    ];
    (qos(), any::<bool>(), any::<bool>(), retain_handling)
        .prop_map(
            |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        )
        .boxed()
}

fn subscribe(p: Protocol) -> impl Strategy<Value = Packet> {
    let props =
        (option::of(sub_id()), user()).prop_map(|(subscription_identifier, user_properties)| {
            SubscribeProperties {
                subscription_identifier,
                user_properties,
            }
        });
    (
        packet_id(),
        vec((filter(), options(p)), 1..4),
        v5_only(p, props),
    )
        .prop_map(|(packet_id, filters, properties)| {
            let filters = filters
                .into_iter()
                .map(|(filter, mut options)| {
                    // No local is a protocol error on a shared subscription.
                    if filter.starts_with("$share/") {
                        options.no_local = false;
                    }
                    SubscribeFilter { filter, options }
                })
                .collect();
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn suback(p: Protocol) -> impl Strategy<Value = Packet> {
    let list = if p.is_v5() { SUBACK } else { SUBACK_V3 };
    (
        packet_id(),
        vec(reason(list), 1..5),
        v5_only(p, ack_properties()),
    )
        .prop_map(|(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        })
}

fn unsubscribe(p: Protocol) -> impl Strategy<Value = Packet> {
    let props = user().prop_map(|user_properties| UnsubscribeProperties { user_properties });
    (packet_id(), vec(filter(), 1..4), v5_only(p, props)).prop_map(
        |(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        },
    )
}

fn unsuback(p: Protocol) -> impl Strategy<Value = Packet> {
    let reasons = v5_only(p, vec(reason(UNSUBACK), 1..5));
    (packet_id(), reasons, v5_only(p, ack_properties())).prop_map(
        |(packet_id, reasons, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                properties,
            })
        },
    )
}

fn disconnect(p: Protocol) -> impl Strategy<Value = Packet> {
    let props = (
        option::of(any::<u32>()),
        option::of(text()),
        user(),
        option::of(text()),
    )
        .prop_map(|(sei, rs, up, sr)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: up,
            server_reference: sr,
        });
    (v5_only(p, reason(DISCONNECT)), v5_only(p, props))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

fn auth() -> impl Strategy<Value = Packet> {
    let props = (
        option::of(text()),
        option::of(bin()),
        option::of(text()),
        user(),
    )
        .prop_map(|(am, ad, rs, up)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        });
    (reason(AUTH), props).prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Any packet `p` can carry, with only the fields meaningful to `p`.
fn packet(p: Protocol) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(p),
        connack(p),
        publish(p),
        pub_response(p, PUBACK).prop_map(Packet::PubAck),
        pub_response(p, PUBACK).prop_map(Packet::PubRec),
        pub_response(p, PUBREL).prop_map(Packet::PubRel),
        pub_response(p, PUBREL).prop_map(Packet::PubComp),
        subscribe(p),
        suback(p),
        unsubscribe(p),
        unsuback(p),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(p),
    ];
    if p.is_v5() {
        prop_oneof![14 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn assert_round_trip(packet: &Packet, p: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, p, &mut buf).map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
    prop_assert_eq!(encoded_len(packet, p).ok(), Some(buf.len()));
    let decoded = decode(&mut buf, p, usize::MAX);
    prop_assert_eq!(decoded, Ok(Some(packet.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn mqtt_3_1_round_trips(packet in packet(Protocol::V3_1)) {
        assert_round_trip(&packet, Protocol::V3_1)?;
    }

    #[test]
    fn mqtt_3_1_1_round_trips(packet in packet(Protocol::V3_1_1)) {
        assert_round_trip(&packet, Protocol::V3_1_1)?;
    }

    #[test]
    fn mqtt_5_round_trips(packet in packet(Protocol::V5)) {
        assert_round_trip(&packet, Protocol::V5)?;
    }

    /// Packets back to back in one buffer come out one at a time, in order.
    #[test]
    fn streams_of_packets_round_trip(packets in vec(packet(Protocol::V5), 1..6)) {
        let mut buf = BytesMut::new();
        for packet in &packets {
            encode(packet, Protocol::V5, &mut buf).unwrap();
        }
        for packet in &packets {
            prop_assert_eq!(decode(&mut buf, Protocol::V5, usize::MAX), Ok(Some(packet.clone())));
        }
        prop_assert!(buf.is_empty());
    }
}
