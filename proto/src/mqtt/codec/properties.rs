//! Which properties each MQTT 5.0 packet carries (MQTT 5.0 section 2.2.2.2),
//! as [`PropertySet`] implementations of the public property structs.

use std::sync::Arc;

use super::property::{
    PropertySet, id, push_user, push_user_run, put_binary, put_bool, put_string,
    put_subscription_id, put_u8, put_u16, put_u32, put_user, read_bool, read_nonzero_u16,
    read_nonzero_u32, read_subscription_id, read_zero_or_one,
};
use super::read::Reader;
use super::write::Sink;
use crate::mqtt::error::{DecodeError, EncodeError};
use crate::mqtt::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};

impl PropertySet for ConnectProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::SESSION_EXPIRY_INTERVAL => self.session_expiry_interval = Some(r.u32()?),
            id::RECEIVE_MAXIMUM => self.receive_maximum = Some(read_nonzero_u16(r)?),
            id::MAXIMUM_PACKET_SIZE => self.maximum_packet_size = Some(read_nonzero_u32(r)?),
            id::TOPIC_ALIAS_MAXIMUM => self.topic_alias_maximum = Some(r.u16()?),
            id::REQUEST_RESPONSE_INFORMATION => {
                self.request_response_information = Some(read_bool(r)?);
            }
            id::REQUEST_PROBLEM_INFORMATION => {
                self.request_problem_information = Some(read_bool(r)?);
            }
            id::USER_PROPERTY => push_user(&mut self.user_properties, r)?,
            id::AUTHENTICATION_METHOD => self.authentication_method = Some(r.string()?),
            id::AUTHENTICATION_DATA => self.authentication_data = Some(r.binary()?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, id::RECEIVE_MAXIMUM, self.receive_maximum);
        put_u32(s, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_u16(s, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_bool(
            s,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_bool(
            s,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_user(s, &self.user_properties)?;
        put_string(
            s,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        put_binary(
            s,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        )
    }
}

impl PropertySet for WillProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::WILL_DELAY_INTERVAL => self.will_delay_interval = Some(r.u32()?),
            id::PAYLOAD_FORMAT_INDICATOR => {
                self.payload_format_indicator = Some(read_zero_or_one(r)?);
            }
            id::MESSAGE_EXPIRY_INTERVAL => self.message_expiry_interval = Some(r.u32()?),
            id::CONTENT_TYPE => self.content_type = Some(r.string()?),
            id::RESPONSE_TOPIC => self.response_topic = Some(r.string()?),
            id::CORRELATION_DATA => self.correlation_data = Some(r.binary()?),
            id::USER_PROPERTY => push_user(&mut self.user_properties, r)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32(s, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_u8(
            s,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        put_u32(s, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_string(s, id::CONTENT_TYPE, self.content_type.as_deref())?;
        put_string(s, id::RESPONSE_TOPIC, self.response_topic.as_deref())?;
        put_binary(s, id::CORRELATION_DATA, self.correlation_data.as_ref())?;
        put_user(s, &self.user_properties)
    }
}

impl PropertySet for ConnAckProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::SESSION_EXPIRY_INTERVAL => self.session_expiry_interval = Some(r.u32()?),
            id::RECEIVE_MAXIMUM => self.receive_maximum = Some(read_nonzero_u16(r)?),
            id::MAXIMUM_QOS => self.maximum_qos = Some(read_zero_or_one(r)?),
            id::RETAIN_AVAILABLE => self.retain_available = Some(read_bool(r)?),
            id::MAXIMUM_PACKET_SIZE => self.maximum_packet_size = Some(read_nonzero_u32(r)?),
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                self.assigned_client_identifier = Some(r.string()?);
            }
            id::TOPIC_ALIAS_MAXIMUM => self.topic_alias_maximum = Some(r.u16()?),
            id::REASON_STRING => self.reason_string = Some(r.string()?),
            id::USER_PROPERTY => push_user(&mut self.user_properties, r)?,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                self.wildcard_subscription_available = Some(read_bool(r)?);
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                self.subscription_identifiers_available = Some(read_bool(r)?);
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                self.shared_subscription_available = Some(read_bool(r)?);
            }
            id::SERVER_KEEP_ALIVE => self.server_keep_alive = Some(r.u16()?),
            id::RESPONSE_INFORMATION => self.response_information = Some(r.string()?),
            id::SERVER_REFERENCE => self.server_reference = Some(r.string()?),
            id::AUTHENTICATION_METHOD => self.authentication_method = Some(r.string()?),
            id::AUTHENTICATION_DATA => self.authentication_data = Some(r.binary()?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(s, id::RECEIVE_MAXIMUM, self.receive_maximum);
        put_u8(s, id::MAXIMUM_QOS, self.maximum_qos);
        put_bool(s, id::RETAIN_AVAILABLE, self.retain_available);
        put_u32(s, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_string(
            s,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref(),
        )?;
        put_u16(s, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_string(s, id::REASON_STRING, self.reason_string.as_deref())?;
        put_user(s, &self.user_properties)?;
        put_bool(
            s,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_bool(
            s,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        put_bool(
            s,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        put_u16(s, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_string(
            s,
            id::RESPONSE_INFORMATION,
            self.response_information.as_deref(),
        )?;
        put_string(s, id::SERVER_REFERENCE, self.server_reference.as_deref())?;
        put_string(
            s,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        put_binary(
            s,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        )
    }
}

impl PropertySet for PublishProperties {
    // A server forwarding one message for several overlapping subscriptions
    // repeats the subscription identifier (MQTT 5.0 section 3.3.2.3.8).
    const REPEATABLE: &'static [u8] = &[id::USER_PROPERTY, id::SUBSCRIPTION_IDENTIFIER];

    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::PAYLOAD_FORMAT_INDICATOR => {
                self.payload_format_indicator = Some(read_zero_or_one(r)?);
            }
            id::MESSAGE_EXPIRY_INTERVAL => self.message_expiry_interval = Some(r.u32()?),
            id::TOPIC_ALIAS => self.topic_alias = Some(read_nonzero_u16(r)?),
            id::RESPONSE_TOPIC => self.response_topic = Some(r.string()?.into()),
            id::CORRELATION_DATA => self.correlation_data = Some(r.binary()?),
            id::USER_PROPERTY => {
                // Not shared yet while decoding: no copy.
                let list = Arc::make_mut(&mut self.user_properties);
                push_user_run(list, r)?;
                if list.len() >= r.max_user_properties() {
                    // Past the receiver's limit: it refuses the message, so
                    // the rest of the block is passed over unread (a flood
                    // of 200,000 would otherwise cost milliseconds to check).
                    r.skip_rest();
                }
            }
            id::SUBSCRIPTION_IDENTIFIER => {
                self.subscription_identifiers.push(read_subscription_id(r)?);
            }
            id::CONTENT_TYPE => self.content_type = Some(r.string()?.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u8(
            s,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        put_u32(s, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16(s, id::TOPIC_ALIAS, self.topic_alias);
        put_string(s, id::RESPONSE_TOPIC, self.response_topic.as_deref())?;
        put_binary(s, id::CORRELATION_DATA, self.correlation_data.as_ref())?;
        put_user(s, &self.user_properties)?;
        for sub_id in &self.subscription_identifiers {
            put_subscription_id(s, *sub_id)?;
        }
        put_string(s, id::CONTENT_TYPE, self.content_type.as_deref())
    }
}

impl PropertySet for AckProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::REASON_STRING => self.reason_string = Some(r.string()?),
            id::USER_PROPERTY => push_user(&mut self.user_properties, r)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_string(s, id::REASON_STRING, self.reason_string.as_deref())?;
        put_user(s, &self.user_properties)
    }
}

impl PropertySet for SubscribeProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::SUBSCRIPTION_IDENTIFIER => {
                self.subscription_identifier = Some(read_subscription_id(r)?);
            }
            id::USER_PROPERTY => push_user(&mut self.user_properties, r)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        if let Some(sub_id) = self.subscription_identifier {
            put_subscription_id(s, sub_id)?;
        }
        put_user(s, &self.user_properties)
    }
}

impl PropertySet for UnsubscribeProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::USER_PROPERTY => push_user(&mut self.user_properties, r)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_user(s, &self.user_properties)
    }
}

impl PropertySet for DisconnectProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::SESSION_EXPIRY_INTERVAL => self.session_expiry_interval = Some(r.u32()?),
            id::REASON_STRING => self.reason_string = Some(r.string()?),
            id::USER_PROPERTY => push_user(&mut self.user_properties, r)?,
            id::SERVER_REFERENCE => self.server_reference = Some(r.string()?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string(s, id::REASON_STRING, self.reason_string.as_deref())?;
        put_user(s, &self.user_properties)?;
        put_string(s, id::SERVER_REFERENCE, self.server_reference.as_deref())
    }
}

impl PropertySet for AuthProperties {
    fn read_one(&mut self, id: u8, r: &mut Reader) -> Result<bool, DecodeError> {
        match id {
            id::AUTHENTICATION_METHOD => self.authentication_method = Some(r.string()?),
            id::AUTHENTICATION_DATA => self.authentication_data = Some(r.binary()?),
            id::REASON_STRING => self.reason_string = Some(r.string()?),
            id::USER_PROPERTY => push_user(&mut self.user_properties, r)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_string(
            s,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        )?;
        put_binary(
            s,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
        )?;
        put_string(s, id::REASON_STRING, self.reason_string.as_deref())?;
        put_user(s, &self.user_properties)
    }
}
