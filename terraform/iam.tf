# The VMs' own service account, with only what Rollcall needs: write its logs and
# metrics, pull its image, read its three secrets, connect to its one Cloud SQL
# instance (through the Auth Proxy), and read/write objects in its bucket. No other
# data access, no rights to change IAM.

resource "google_service_account" "vm" {
  account_id   = "${var.name}-vm"
  display_name = "Rollcall GPU instances"
  description  = "Runs the rollcall container on the GPU instance group."

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "vm" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.vm.email}"
}

resource "google_artifact_registry_repository_iam_member" "vm_pull" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.vm.email}"
}

resource "google_storage_bucket_iam_member" "vm_photos" {
  bucket = google_storage_bucket.photos.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.vm.email}"
}

# Cloud SQL Auth Proxy: connect to this instance only.
resource "google_project_iam_member" "vm_cloudsql" {
  project = var.project_id
  role    = "roles/cloudsql.client"
  member  = "serviceAccount:${google_service_account.vm.email}"

  condition {
    title       = "${var.name}-sql-only"
    description = "Only the Rollcall Cloud SQL instance."
    expression  = "resource.type == 'sqladmin.googleapis.com/Instance' && resource.name == 'projects/${var.project_id}/instances/${google_sql_database_instance.this.name}'"
  }
}
