//! msk-sync: apply MSK (Kafka) change events to a SQL database.
//!
//! A batch of Kafka records, as Lambda's MSK event-source mapping delivers it, is ordered, decoded, routed by
//! `changeType`, mapped to rows and applied in one database transaction. Records that cannot be applied are
//! kept in a dead-letter table in that same transaction; failures a retry may cure fail the whole batch.
//!
//! # Layout
//!
//! Data flows one way; no module imports a later stage.
//!
//! - [`event`]: the MSK event model and the flatten + order step (`event/seeds.rs`: the one-pass reader).
//! - [`decode`]: base64 and one file (or folder: `avro/`, `protobuf/`) per value format, into
//!   [`message::Message`]s (JSON's data model, borrowing from the record's bytes).
//! - `filter`: the emit filter (aether); `mask`: classification masking (aether, plus nested records).
//! - [`change`]: what a message asks for: bedrock's `changeType`, a sync's own change field, or Debezium's `op`.
//! - `topics`: which sync receives a topic (exact names, globs, `*`).
//! - [`sync`]: mappings (declarative and typed), the preflight against the database (`setup`, `preflight/`),
//!   collapse per key (`collapse`), bulk apply (`apply`, `statements`), what a database error means
//!   (`db_error`), dead letters, the version guard.
//! - [`pipeline`]: the stages over one batch, producing a [`report::BatchReport`] (`pipeline/batch.rs`: where
//!   each message's fate is settled); the [`pipeline::Handler`] (`pipeline/handler.rs`).
//! - [`redrive`]: dead letters run again through the current config; [`preview`]: `replay --plan`, a batch
//!   applied in a transaction that is rolled back, message by message.
//! - [`report`]: the batch report, which is also the Lambda response.
//! - [`metrics`]: a batch's report as CloudWatch Embedded Metric Format (Lambda's stdout, `--emf`).
//! - `text`: strings borrowed from serde, UTF-8 checks (shared by the event and the messages).
//! - `threads`: the threads a batch is read and planned on, which stay up between batches, and their limit
//!   (below both `decode` and `pipeline`, which read it).
//! - [`config`]: the configuration file and its validation.
//! - [`run`]: the ways in: Lambda, `replay` (and `--plan`), `redrive`, `config check`, and the local runner on a
//!   Kafka broker (`consume`, `publish`, feature `kafka`), and the database secret read from Secrets Manager
//!   (`run::secret`, feature `aws`). One file per command under `run/cli/`; the runner's loop in
//!   `run/local/runner.rs`. The only module that knows about Lambda, Kafka or AWS clients.
//!
//! `filter`, `mask`, `topics`, `text` and `threads` are internal; their settings are in [`config`].
//!
//! # Writing a function
//!
//! What a function's crate needs is re-exported here: the [`App`] builder and [`main`], and for a typed sync
//! [`FromKafkaEvent`] (a sea-orm model built from a [`Message`], with [`field`] / [`optional_field`]) and
//! [`App::typed`], which registers it in one call:
//!
//! ```ignore
//! use msk_sync::{App, FromKafkaEvent, Message, field};
//!
//! impl FromKafkaEvent for planet::Model {
//!     fn from_kafka_event(message: &Message<'_>) -> Result<Self, String> {
//!         Ok(Self { uuid: field(message, "planetUuid")?, name: field(message, "planetName")? })
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     msk_sync::main(App::typed::<planet::Entity>("planet-sync", "planet")).await
//! }
//! ```

#![warn(missing_docs)]

pub mod change;
pub mod config;
pub mod decode;
pub mod event;
pub(crate) mod filter;
pub(crate) mod mask;
pub mod message;
pub mod metrics;
mod path;
pub mod pipeline;
pub mod preview;
pub mod redrive;
pub mod report;
pub mod run;
pub mod sync;
mod text;
mod threads;
pub(crate) mod topics;

pub use message::Message;
pub use run::{App, main};
pub use sync::typed::{FromKafkaEvent, TypedMapping, field, optional_field};
