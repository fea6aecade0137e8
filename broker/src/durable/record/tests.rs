use tidemq_proto::mqtt::{Packet, PublishProperties, RetainHandling};

use super::*;

fn publish(qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: true,
        topic: "a/b".into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(1),
        properties: PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())].into(),
            ..PublishProperties::default()
        },
        payload: Bytes::from_static(b"hello"),
    }
}

#[test]
fn every_record_round_trips() {
    let records = vec![
        Record::Publish {
            publish: publish(QoS::ExactlyOnce),
            expires_at_ms: Some(123_456),
            origin: Some(Origin {
                key: "t/pub".into(),
                epoch: 3,
                packet_id: 77,
            }),
            recipients: vec![
                Recipient {
                    key: "t/a".into(),
                    epoch: 1,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![4, 9],
                },
                Recipient {
                    key: "t/b".into(),
                    epoch: 2,
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    subscription_ids: vec![],
                },
            ],
        },
        Record::Ack {
            key: "t/a".into(),
            epoch: 1,
            offset: 42,
        },
        Record::Released {
            key: "t/b".into(),
            epoch: 2,
            offset: 42,
        },
        Record::InboundReleased {
            key: "t/pub".into(),
            epoch: 3,
            packet_id: 77,
        },
        Record::Session(StoredSession {
            key: "t/a".into(),
            epoch: 1,
            expiry_secs: u32::MAX,
            protocol: Protocol::V3_1_1,
            subscriptions: vec![StoredSubscription {
                filter: "$share/g/x/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
                id: Some(5),
            }],
            username: Some("alice".into()),
        }),
        Record::Session(StoredSession {
            key: "t/b".into(),
            epoch: 2,
            expiry_secs: 60,
            protocol: Protocol::V5,
            subscriptions: Vec::new(),
            username: None,
        }),
        Record::SessionGone { key: "t/a".into() },
        Record::Moved {
            from: 17,
            timestamp_ms: 1_700_000_000_123,
            record: Box::new(Record::Publish {
                publish: publish(QoS::AtLeastOnce),
                expires_at_ms: None,
                origin: None,
                recipients: vec![Recipient {
                    key: "t/away".into(),
                    epoch: 2,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![9],
                }],
            }),
        },
        Record::Subscriptions {
            key: "t/a".into(),
            epoch: 4,
            added: vec![StoredSubscription {
                filter: "x/#".into(),
                options: SubscriptionOptions::default(),
                id: Some(3),
            }],
            removed: vec!["y/+".into(), "z".into()],
        },
        Record::Retain {
            publish: publish(QoS::AtMostOnce),
            expires_at_ms: None,
        },
        Record::Forwarded {
            origin: 3,
            sequence: 1_764_000_000_000_042,
        },
    ];
    for record in records {
        let bytes = Bytes::from(record.encode().expect("encodes"));
        let decoded = Record::decode(bytes.clone()).expect("decodes");
        assert_eq!(decoded, record);
        let mut seen = Vec::new();
        let view = Record::replay_view(&bytes, |key, epoch| seen.push((key.to_string(), epoch)))
            .expect("replay view");
        let expected = match &record {
            Record::Publish {
                origin, recipients, ..
            } => {
                let keys: Vec<_> = recipients
                    .iter()
                    .map(|r| (r.key.clone(), r.epoch))
                    .collect();
                assert_eq!(seen, keys);
                ReplayView::Publish {
                    origin: origin
                        .as_ref()
                        .map(|o| (o.key.as_str(), o.epoch, o.packet_id)),
                }
            }
            Record::Ack { key, epoch, offset } => ReplayView::Ack {
                key,
                epoch: *epoch,
                offset: *offset,
            },
            Record::Released { key, epoch, offset } => ReplayView::Released {
                key,
                epoch: *epoch,
                offset: *offset,
            },
            Record::InboundReleased {
                key,
                epoch,
                packet_id,
            } => ReplayView::InboundReleased {
                key,
                epoch: *epoch,
                packet_id: *packet_id,
            },
            Record::Forwarded { origin, sequence } => ReplayView::Forwarded {
                origin: *origin,
                sequence: *sequence,
            },
            Record::Moved {
                from, timestamp_ms, ..
            } => {
                assert_eq!(seen, [("t/away".to_string(), 2)]);
                ReplayView::Moved {
                    from: *from,
                    timestamp_ms: *timestamp_ms,
                }
            }
            _ => ReplayView::Other,
        };
        assert_eq!(view, expected);
        // Cut short, the parts recovery reads are refused, never misread.
        if !matches!(expected, ReplayView::Other | ReplayView::Moved { .. }) {
            let header_len = match &record {
                // The message itself is not read.
                Record::Publish { publish, .. } => {
                    bytes.len()
                        - mqtt::encoded_len(&Packet::Publish(publish.clone()), Protocol::V5)
                            .expect("encodable")
                }
                _ => bytes.len(),
            };
            for len in 0..header_len.min(bytes.len()) {
                let cut = &bytes[..len];
                let cut_view = Record::replay_view(cut, |_, _| {});
                assert!(cut_view.is_err() || len >= header_len, "cut at {len}");
            }
        }
    }
}

#[test]
fn damaged_records_are_errors_not_panics() {
    let record = Record::Publish {
        publish: publish(QoS::AtLeastOnce),
        expires_at_ms: None,
        origin: None,
        recipients: vec![Recipient {
            key: "t/a".into(),
            epoch: 1,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![1],
        }],
    };
    let bytes = record.encode().expect("encodes");
    for len in 0..bytes.len() {
        assert!(
            Record::decode(Bytes::copy_from_slice(&bytes[..len])).is_err(),
            "cut at {len}"
        );
    }
    assert!(Record::decode(Bytes::from_static(&[99])).is_err());
}

#[test]
fn many_recipients_are_split_into_records_that_replay_back_to_the_message() {
    let recipients: Vec<Recipient> = (0..5_000)
        .map(|i| Recipient {
            key: format!("t/{i:0>120}"),
            epoch: i,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![1],
        })
        .collect();
    let chunks = split(&recipients);
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| {
        c.iter().map(Recipient::encoded_len).sum::<usize>() <= RECIPIENT_BYTES_PER_RECORD
    }));
    assert_eq!(chunks.concat(), recipients, "in order, none lost");
    let record = Record::Recipients {
        back: 2,
        recipients: chunks[2].clone(),
    };
    let bytes = record.encode().expect("encodes");
    assert_eq!(
        Record::decode(Bytes::from(bytes.clone())).expect("decodes"),
        record
    );
    let mut seen = Vec::new();
    let view = Record::replay_view(&bytes, |key, epoch| seen.push((key.to_string(), epoch)))
        .expect("replays");
    assert_eq!(view, ReplayView::Recipients { back: 2 });
    assert_eq!(seen.len(), chunks[2].len());
    assert_eq!(seen[0], (chunks[2][0].key.clone(), chunks[2][0].epoch));
    // Recipients with the longest keys: four fit a list, the fifth starts one.
    let huge = Recipient {
        key: "k".repeat(60_000),
        ..recipients[0].clone()
    };
    let chunks = split(&vec![huge; 5]);
    assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [4, 1]);
    assert_eq!(split(&[]), vec![Vec::<Recipient>::new()]);
}

/// The recipient lists the records of a message hold, as
/// [`recipient_ranges`] splits them.
fn split(recipients: &[Recipient]) -> Vec<Vec<Recipient>> {
    recipient_ranges(recipients.iter().map(Recipient::encoded_len))
        .map(|range| recipients[range].to_vec())
        .collect()
}

#[test]
fn each_recipient_is_placed_in_the_record_that_lists_it() {
    let lens = [100_000, 100_000, 100_000, 5, 300_000, 1, 1];
    let ranges: Vec<_> = recipient_ranges(lens).collect();
    assert_eq!(ranges, [0..2, 2..4, 4..5, 5..7]);
    let mut split = RecipientSplit::default();
    let placed: Vec<usize> = lens.iter().map(|&len| split.place(len)).collect();
    assert_eq!(placed, [0, 0, 1, 1, 2, 3, 3]);
}

#[test]
fn acks_list_a_sessions_completions_in_one_record() {
    let offsets = [7, 8, 1 << 40];
    let bytes = acks_record("t/c", 3, &offsets).expect("encodes");
    let decoded = Record::decode(bytes::Bytes::from(bytes.clone())).expect("decodes");
    assert_eq!(
        decoded,
        Record::Acks {
            key: "t/c".into(),
            epoch: 3,
            offsets: offsets.to_vec(),
        }
    );
    assert_eq!(decoded.encode().expect("encodes"), bytes, "one encoding");
    match Record::replay_view(&bytes, |_, _| {}).expect("replays") {
        ReplayView::Acks {
            key,
            epoch,
            offsets: read,
        } => {
            assert_eq!((key, epoch), ("t/c", 3));
            assert_eq!(read.collect::<Vec<_>>(), offsets);
        }
        other => panic!("{other:?}"),
    }
    // A count past the bytes is refused, not read past the end.
    let mut short = bytes;
    short.truncate(short.len() - 1);
    assert!(Record::replay_view(&short, |_, _| {}).is_err());
}
