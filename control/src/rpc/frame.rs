//! Frames on the cluster port: a 4-byte big-endian length, then that many bytes of JSON.
//! A frame larger than the limit is refused on its length, before any of it is read, and a
//! frame within it is buffered only as its bytes arrive (a peer announcing a large frame and
//! sending little costs what it sent).

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side accepts: enough for a snapshot chunk of the cluster store.
pub const MAX_FRAME: usize = 32 * 1024 * 1024;
/// The largest frame taken from a peer without a cluster certificate: it may only ask to
/// join (a token and a certificate request, a few KiB), so it gets no 32 MiB buffers.
pub const MAX_UNAUTHENTICATED_FRAME: usize = 256 * 1024;

/// Errors reading or writing frames.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame over the limit (announced by the peer, or about to be written).
    #[error("frame of {size} bytes refused (limit {limit} bytes)")]
    TooLarge { size: usize, limit: usize },
    /// The frame is not the JSON we expect.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one message as a frame.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(
    io: &mut W,
    message: &T,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(message)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            size: body.len(),
            limit: MAX_FRAME,
        });
    }
    let len = u32::try_from(body.len()).expect("MAX_FRAME fits in u32");
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&body).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame of at most [`MAX_FRAME`] bytes; Ok(None) when the peer closed cleanly
/// between frames.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(
    io: &mut R,
) -> Result<Option<T>, FrameError> {
    read_limited(io, MAX_FRAME).await
}

/// Reads one frame of at most `limit` bytes; Ok(None) when the peer closed cleanly between
/// frames.
pub async fn read_limited<R: AsyncRead + Unpin, T: DeserializeOwned>(
    io: &mut R,
    limit: usize,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { size: len, limit });
    }
    // Grows with what arrives, not with what the length announced.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    io.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_close_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write(&mut a, &vec!["x".to_string(); 3]).await.unwrap();
        drop(a);
        let got: Option<Vec<String>> = read(&mut b).await.unwrap();
        assert_eq!(got.unwrap(), ["x", "x", "x"]);
        assert!(read::<_, Vec<String>>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_malformed_frames_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read::<_, String>(&mut b).await,
            Err(FrameError::TooLarge { .. })
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{{{").await.unwrap();
        assert!(matches!(
            read::<_, String>(&mut b).await,
            Err(FrameError::Malformed(_))
        ));
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"short").await.unwrap();
        drop(a);
        assert!(matches!(
            read::<_, String>(&mut b).await,
            Err(FrameError::Io(_))
        ));
    }

    #[tokio::test]
    async fn the_limit_is_per_call_and_checked_before_reading() {
        // Announced past the limit: refused at once, though the body never comes.
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&(MAX_UNAUTHENTICATED_FRAME as u32 + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_limited::<_, String>(&mut b, MAX_UNAUTHENTICATED_FRAME)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "frame of {} bytes refused (limit {MAX_UNAUTHENTICATED_FRAME} bytes)",
                MAX_UNAUTHENTICATED_FRAME + 1
            )
        );
        // Within the limit, a frame is read whole across many small writes.
        let (mut a, mut b) = tokio::io::duplex(64);
        let message = "y".repeat(100_000);
        let writer = tokio::spawn(async move { write(&mut a, &message).await.unwrap() });
        let got: String = read_limited(&mut b, MAX_UNAUTHENTICATED_FRAME)
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), 100_000);
        // Writing past MAX_FRAME is refused before anything is sent.
        let (mut a, _b) = tokio::io::duplex(64);
        let huge = "z".repeat(MAX_FRAME);
        assert!(matches!(
            write(&mut a, &huge).await,
            Err(FrameError::TooLarge { .. })
        ));
    }
}
