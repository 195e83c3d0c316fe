//! Stock operations shared by the stages and orders-api; each runs inside
//! the caller's transaction.

use bson::{doc, DateTime};
use mongodb::{ClientSession, Database};

use super::documents::{InventoryDocument, ReservationDocument, ReservationState};
use super::{INVENTORY, RESERVATIONS};

/// Gives an order's reserved stock back, once: the reservation moves from
/// `reserved` to `released` and only the caller that made that move
/// restores the stock. Returns whether this call released anything.
pub async fn release(
    db: &Database,
    session: &mut ClientSession,
    order_id: &str,
    reason: &str,
    at: DateTime,
) -> mongodb::error::Result<bool> {
    let reservation = db
        .collection::<ReservationDocument>(RESERVATIONS)
        .find_one_and_update(
            doc! {"_id": order_id, "state": "reserved"},
            doc! {"$set": {"state": "released", "reason": reason, "updatedAt": at}},
        )
        .session(&mut *session)
        .await?;
    let Some(reservation) = reservation else {
        return Ok(false);
    };
    let inventory = db.collection::<InventoryDocument>(INVENTORY);
    for item in &reservation.items {
        inventory
            .update_one(
                doc! {"productId": &item.product_id},
                doc! {"$inc": {"stock": item.quantity}, "$set": {"updatedAt": at}},
            )
            .session(&mut *session)
            .await?;
    }
    Ok(true)
}

/// Marks a reserved order's stock as sold. Returns false when the
/// reservation was no longer `reserved` (released by a cancellation).
pub async fn commit_reservation(
    db: &Database,
    session: &mut ClientSession,
    order_id: &str,
    at: DateTime,
) -> mongodb::error::Result<bool> {
    Ok(commit_reservations(db, session, &[order_id], at).await? == 1)
}

/// Marks the stock of several reserved orders as sold; returns how many
/// reservations were still `reserved` (and so moved).
pub async fn commit_reservations(
    db: &Database,
    session: &mut ClientSession,
    order_ids: &[&str],
    at: DateTime,
) -> mongodb::error::Result<u64> {
    let result = db
        .collection::<ReservationDocument>(RESERVATIONS)
        .update_many(
            doc! {"_id": {"$in": order_ids}, "state": "reserved"},
            doc! {"$set": {"state": ReservationState::Committed.as_str(), "updatedAt": at}},
        )
        .session(session)
        .await?;
    Ok(result.matched_count)
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Reserved => "reserved",
            ReservationState::Committed => "committed",
            ReservationState::Released => "released",
            ReservationState::Rejected => "rejected",
            ReservationState::Skipped => "skipped",
        }
    }

    /// Whether stock was ever taken for the order (so StockReserved was
    /// due).
    pub fn was_reserved(self) -> bool {
        matches!(
            self,
            ReservationState::Reserved | ReservationState::Committed | ReservationState::Released
        )
    }
}
