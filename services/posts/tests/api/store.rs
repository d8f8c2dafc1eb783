//! The store's feed query when the author list is longer than one MongoDB query takes.

use instaclone_posts::{
    domain::{PageRequest, PostId},
    store::{AUTHORS_PER_QUERY, PostStore},
};
use instaclone_shared::testing::TestEnv;
use mongodb::bson::oid::ObjectId;
use uuid::Uuid;

#[tokio::test]
async fn a_feed_over_many_authors_merges_its_chunks_into_exact_pages() {
    let env = TestEnv::new();
    let database = env.mongo(&env.settings.mongo.posts_database).await;
    let store = PostStore::new(&database);
    store.ensure_indexes().await.unwrap();

    let followed: Vec<Uuid> = (0..AUTHORS_PER_QUERY * 2 + 17)
        .map(|_| Uuid::new_v4())
        .collect();
    let stranger = Uuid::new_v4();
    let mut documents = Vec::new();
    let mut expected = Vec::new();
    // Two rounds, so every chunk holds posts both older and newer than the others' posts.
    for round in 0..2 {
        for author in followed.iter().rev() {
            let id = ObjectId::new();
            expected.push(id.to_hex());
            documents.push(PostStore::seed_document(
                id,
                *author,
                "p",
                "https://e.com/a.jpg",
            ));
            let noise = ObjectId::new();
            documents.push(PostStore::seed_document(
                noise,
                stranger,
                &format!("{round}"),
                "https://e.com/b.jpg",
            ));
        }
    }
    store.seed(documents).await.unwrap();
    expected.reverse(); // newest first

    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = PageRequest::parse(Some(50), before.as_deref()).unwrap();
        let posts = store.page_by_authors(&followed, page).await.unwrap();
        assert!(posts.len() <= 50);
        let Some(last) = posts.last() else { break };
        before = Some(last.id.clone());
        seen.extend(posts.into_iter().map(|post| post.id));
    }
    assert_eq!(seen.len(), expected.len());
    assert_eq!(
        seen, expected,
        "every followed post once, newest first, no stranger's"
    );
    assert!(PostId::parse(&seen[0]).is_ok());
}
