//! Strategies for whole packets of one protocol level, with only the fields
//! meaningful to that level.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tidemq_proto::mqtt::*;

use super::fields::*;
use super::reasons::*;

pub fn connect(p: Protocol) -> impl Strategy<Value = Packet> {
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

pub fn connack(p: Protocol) -> impl Strategy<Value = Packet> {
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

pub fn publish(p: Protocol) -> impl Strategy<Value = Packet> {
    (
        (qos(), any::<bool>(), any::<bool>(), packet_id()),
        (
            topic(),
            any::<bool>(),
            v5_only(p, publish_properties()),
            bin(),
        ),
    )
        .prop_map(
            |((qos, dup, retain, id), (topic, use_alias, properties, payload))| {
                let at_most_once = qos == QoS::AtMostOnce;
                // In 5.0 an alias may stand in for the topic.
                let aliased = use_alias && properties.topic_alias.is_some();
                Packet::Publish(Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic: if aliased { String::new() } else { topic },
                    packet_id: (!at_most_once).then_some(id),
                    properties,
                    payload,
                })
            },
        )
}

pub fn pub_response(p: Protocol, list: &'static [ReasonCode]) -> BoxedStrategy<PubResponse> {
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

pub fn options(p: Protocol) -> BoxedStrategy<SubscriptionOptions> {
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

pub fn subscribe(p: Protocol) -> impl Strategy<Value = Packet> {
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

pub fn suback(p: Protocol) -> impl Strategy<Value = Packet> {
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

pub fn unsubscribe(p: Protocol) -> impl Strategy<Value = Packet> {
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

pub fn unsuback(p: Protocol) -> impl Strategy<Value = Packet> {
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

pub fn disconnect(p: Protocol) -> impl Strategy<Value = Packet> {
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

pub fn auth() -> impl Strategy<Value = Packet> {
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
pub fn packet(p: Protocol) -> BoxedStrategy<Packet> {
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
