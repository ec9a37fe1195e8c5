# Secret Manager: the database password, the first admin API key and the Redis AUTH
# string. All are generated here (never written in code or tfvars) and read by the VMs
# at boot; only the instances' service account can access them.

resource "random_password" "admin_key" {
  length  = 48
  special = false
}

locals {
  # Static names for for_each (the values are sensitive, the names are not).
  secret_names = ["db-password", "admin-key", "redis-auth"]
  secrets = {
    db-password = random_password.db.result
    admin-key   = random_password.admin_key.result
    redis-auth  = google_redis_instance.this.auth_string
  }
}

resource "google_secret_manager_secret" "this" {
  for_each = toset(local.secret_names)

  secret_id = "${var.name}-${each.key}"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "this" {
  for_each = toset(local.secret_names)

  secret      = google_secret_manager_secret.this[each.key].id
  secret_data = local.secrets[each.key]
}

resource "google_secret_manager_secret_iam_member" "vm_access" {
  for_each = toset(local.secret_names)

  secret_id = google_secret_manager_secret.this[each.key].secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.vm.email}"
}
