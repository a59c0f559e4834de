//! The README's example: a server and a client in one program.
use drs::prelude::*;

#[derive(serde::Deserialize)]
struct Add {
    a: f64,
    b: f64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::new();
    server.on("add", |args: Add| async move { args.a + args.b });
    let url = drs::listen(&server, "tcp://127.0.0.1:0").await?;

    let conn = drs::connect(&url).await?;
    let sum: f64 = conn
        .call("add", serde_json::json!({"a": 1, "b": 2}))
        .await?;
    println!("1 + 2 = {sum}");
    Ok(())
}
