//! Strategies for fields and 5.0 property sets.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tidemq_proto::mqtt::*;

pub fn reason(list: &'static [ReasonCode]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(list)
}

/// Any string the codec accepts: no U+0000, multi-byte characters included.
pub fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

pub fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

pub fn user() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

pub fn topic() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9$ é/_-]{1,24}"
}

pub fn plain_filter() -> impl Strategy<Value = String> {
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

pub fn filter() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => plain_filter(),
        1 => ("[a-z0-9_]{1,6}", plain_filter()).prop_map(|(g, f)| format!("$share/{g}/{f}")),
    ]
}

pub fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

pub fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

pub fn sub_id() -> impl Strategy<Value = u32> {
    1..=268_435_455u32
}

/// `Some` strategy output only for 5.0, so older protocols see defaults.
pub fn v5_only<T: Default + std::fmt::Debug + Clone + 'static>(
    p: Protocol,
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if p.is_v5() {
        s.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

pub fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
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

pub fn will_properties() -> impl Strategy<Value = WillProperties> {
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

pub fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
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

pub fn publish_properties() -> impl Strategy<Value = PublishProperties> {
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
                response_topic: rt.map(Into::into),
                correlation_data: cd,
                user_properties: up.into(),
                subscription_identifiers: si,
                content_type: ct.map(Into::into),
            },
        )
}

pub fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(text()), user()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}
