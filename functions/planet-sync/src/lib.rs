//! The typed sync, bedrock's Planet example: a sea-orm entity built from a message in Rust.
//!
//! Messages look like `{"changeType": "CREATED", "planetUuid": "…", "planetName": "…"}`; the table is
//! `servicea_planet (uuid primary key, name)`. The record key, when a producer sets it, is the planet's uuid, so
//! a tombstone deletes that planet.

use msk_sync::{App, FromKafkaEvent, Message, field};

use sea_orm::sea_query::Value as SqlValue;

pub mod planet {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "servicea_planet")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub uuid: String,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

impl FromKafkaEvent for planet::Model {
    fn from_kafka_event(message: &Message<'_>) -> Result<Self, String> {
        Ok(Self {
            uuid: field(message, "planetUuid")?,
            name: field(message, "planetName")?,
        })
    }

    /// A DELETED event needs only the uuid.
    fn delete_key(message: &Message<'_>) -> Result<Vec<SqlValue>, String> {
        Ok(vec![field::<String>(message, "planetUuid")?.into()])
    }

    fn tombstone_key(key: &str) -> Result<Vec<SqlValue>, String> {
        Ok(vec![key.to_string().into()])
    }
}

/// The planet-sync function: every topic its trigger subscribes to carries planets.
pub fn app() -> App {
    App::typed::<planet::Entity>("planet-sync", "planet")
}
