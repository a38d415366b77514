//! Frames on the cluster port: a 4-byte big-endian length, then that many bytes of JSON.
//! A frame larger than the limit is refused before any of it is buffered.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame either side accepts: enough for a snapshot chunk of the cluster store.
pub const MAX_FRAME: usize = 32 * 1024 * 1024;

/// Errors reading or writing frames.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer announced a frame over the limit.
    #[error("frame of {0} bytes refused (limit {MAX_FRAME})")]
    TooLarge(usize),
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
        return Err(FrameError::TooLarge(body.len()));
    }
    let len = u32::try_from(body.len()).expect("MAX_FRAME fits in u32");
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&body).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame; Ok(None) when the peer closed cleanly between frames.
pub async fn read<R: AsyncRead + Unpin, T: DeserializeOwned>(
    io: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
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
            Err(FrameError::TooLarge(_))
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
}
