//! Container files that inflate far beyond their size (issue 14, item 2): a batch inflates at most its budget
//! (`[codec] max_inflated_mib`, 256 MiB by default) in total; every record past it is dead-lettered with a
//! reason naming the limit, and the rest of the batch applies.

use msk_sync_tests::*;

const LIMIT_REASON: &str = "past their limit (codec.max_inflated_mib = ";

#[tokio::test]
async fn a_batch_inflates_at_most_its_budget() {
    // 20 records, each a container file of one 60 MiB deflated block (about 60 KB of base64).
    let event = msk_sync_bench::inflate::event(20, 60 << 20);
    for (budget, applied) in [(None, 4), (Some(100), 1)] {
        let db = TestDb::new(Backend::Sqlite, "inflate").await;
        let config = match budget {
            None => msk_sync_bench::inflate::CONFIG.to_string(),
            Some(mib) => msk_sync_bench::inflate::CONFIG.replace(
                "value = \"avro-ocf\"\n",
                &format!("value = \"avro-ocf\"\nmax_inflated_mib = {mib}\n"),
            ),
        };
        let app = entity_sync();
        let handler = app
            .load(Some(&db.write("inflate.toml", &config)))
            .unwrap()
            .handler(Some(&db.url))
            .await
            .unwrap();
        let report = handler.handle_json(event.clone()).await.unwrap();
        assert_eq!(
            (report.received, report.upserted, report.dead_lettered),
            (20, applied, 20 - applied),
            "{budget:?}: {report:?}"
        );
        let expected = format!("{LIMIT_REASON}{} MiB", budget.unwrap_or(256));
        let reasons: Vec<&str> = report
            .records
            .iter()
            .filter_map(|r| r.reason.as_deref())
            .collect();
        assert_eq!(reasons.len(), 20 - applied, "{reasons:?}");
        assert!(
            reasons.iter().all(|r| r.contains(&expected)),
            "{expected}: {reasons:?}"
        );
        // The first records, in offset order, are the ones that fit.
        let rows = db.rows("padded", &["uuid"], "uuid").await;
        let want: Vec<Vec<String>> = (0..applied).map(|i| vec![format!("p{i}")]).collect();
        assert_eq!(rows, want);
    }
}
