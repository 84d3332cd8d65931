//! What the server's test suites share: `kiln serve` on port 0 over a data directory of
//! its own, and the administrator's token it wrote there.

use kiln_server::{ServerConfig, ServerConfigLayer, ServerHandle};

pub(crate) struct TestServer {
    pub(crate) handle: ServerHandle,
    pub(crate) admin_token: String,
    _data_dir: tempfile::TempDir,
}

/// Starts a server with `layer`'s settings; the data directory and the listen address
/// (loopback, port 0) are this function's.
pub(crate) async fn start_server(layer: ServerConfigLayer) -> TestServer {
    let data_dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::try_from(ServerConfigLayer {
        data_dir: Some(data_dir.path().to_owned()),
        listen: Some("127.0.0.1:0".to_owned()),
        ..layer
    })
    .unwrap();
    let handle = kiln_server::start(config).await.unwrap();
    let admin_token = std::fs::read_to_string(data_dir.path().join("admin-token")).unwrap().trim().to_owned();
    TestServer { handle, admin_token, _data_dir: data_dir }
}
