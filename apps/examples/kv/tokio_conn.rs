//! The connection loop of the tokio KV servers, generic over tokio's `AsyncRead +
//! AsyncWrite`: `kv_tokio` runs it on plex's streams, `kv_tokio_linux` on tokio's own.
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{Session, Store};

/// Answer requests until the peer closes (or the connection fails).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(store: &Store, mut stream: S) -> std::io::Result<()> {
    let (mut session, mut buf, mut out) = (Session::default(), vec![0u8; 16 << 10], Vec::new());
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        session.input(store, &buf[..n], &mut out);
        stream.write_all(&out).await?;
        out.clear();
    }
}
