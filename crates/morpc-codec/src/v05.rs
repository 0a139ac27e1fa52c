//! `Framing::V05` (MatrixOne morpc v0.5.0):
//!
//! ```text
//! plain   : u32 len | u8 0x00 | message
//! payload : u32 len | u8 0x01 | u32 msize | message | payload
//! ```
//! Only a non-empty payload produces a payload frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::take_u32;
use crate::{
    CodecConfig, CodecError, FlagChecking, Frame, FrameBody, FrameError, Framing, Message,
};

/// Flag of a plain frame.
const PLAIN: u8 = 0x00;
/// Flag of a frame with a payload.
const PAYLOAD: u8 = 0x01;

/// Appends `frame` (length prefix left zero for the caller) and returns its payload.
#[inline]
pub(crate) fn encode<M: Message>(
    _config: &CodecConfig,
    frame: &Frame<M>,
    dst: &mut BytesMut,
) -> Result<Option<Bytes>, CodecError> {
    let FrameBody::Message(msg) = &frame.body else {
        return Err(CodecError::Unsupported {
            what: "ping, pong and cancel frames",
            framing: Framing::V05,
        });
    };
    let payload = msg.payload().filter(|p| !p.is_empty());
    let msize = msg.encoded_len();
    dst.reserve(4 + 1 + 4 + msize);
    dst.put_u32(0);
    match payload {
        Some(_) => {
            dst.put_u8(PAYLOAD);
            let msize = u32::try_from(msize).map_err(|_| CodecError::FrameTooLarge {
                size: msize,
                max: u32::MAX as usize,
            })?;
            dst.put_u32(msize);
        }
        None => dst.put_u8(PLAIN),
    }
    msg.encode(dst);
    Ok(payload.cloned())
}

/// Decodes one frame (length prefix already removed).
#[inline]
pub(crate) fn decode<M: Message>(
    config: &CodecConfig,
    mut rest: Bytes,
) -> Result<Frame<M>, CodecError> {
    let flag = rest.get_u8();
    let payload = match flag {
        PAYLOAD => {
            let msize = take_u32(&mut rest, "message size")? as usize;
            if msize > rest.len() {
                return Err(FrameError::SizeBeyondFrame {
                    claimed: msize,
                    available: rest.len(),
                }
                .into());
            }
            Some(rest.split_off(msize))
        }
        PLAIN => None,
        _ if config.flags() == FlagChecking::Lenient => None,
        _ => return Err(CodecError::UnknownFlag(flag)),
    };
    Ok(Frame::message(M::decode(rest, payload)?))
}
