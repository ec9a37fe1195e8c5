# State: Cloud SQL for PostgreSQL, Memorystore for Redis, the photo bucket, and the
# Artifact Registry repository the images are pushed to.

# ---------------------------------------------------------------------------------------
# Cloud SQL for PostgreSQL: private IP only, client-certificate TLS required (the
# replicas connect through the Cloud SQL Auth Proxy, which does mTLS with short-lived
# certificates and IAM authorisation), daily backups with point-in-time recovery.
# ---------------------------------------------------------------------------------------

resource "google_sql_database_instance" "this" {
  # checkov:skip=CKV2_GCP_13:log_duration=on writes a line for every statement (several per recognition request), which at the target request rates costs more in Cloud Logging than the database; slow and expensive statements are captured by Query Insights (enabled below) instead.
  name                = "${var.name}-pg"
  region              = var.region
  database_version    = var.db_version
  deletion_protection = var.deletion_protection

  settings {
    edition                     = "ENTERPRISE"
    tier                        = var.db_tier
    availability_type           = var.db_availability_type
    disk_type                   = "PD_SSD"
    disk_size                   = var.db_disk_size_gb
    disk_autoresize             = true
    deletion_protection_enabled = var.deletion_protection
    user_labels                 = local.labels

    ip_configuration {
      ipv4_enabled    = false
      private_network = google_compute_network.this.id
      ssl_mode        = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
    }

    backup_configuration {
      enabled                        = true
      start_time                     = "03:00"
      point_in_time_recovery_enabled = true
      transaction_log_retention_days = var.db_log_retention_days

      backup_retention_settings {
        retained_backups = var.db_backup_retention_count
        retention_unit   = "COUNT"
      }
    }

    maintenance_window {
      day          = 7
      hour         = 4
      update_track = "stable"
    }

    insights_config {
      query_insights_enabled  = true
      record_application_tags = false
      record_client_address   = false
    }

    # Audit-grade logging (CIS PostgreSQL benchmark flags for Cloud SQL).
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "error"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_hostname"
      value = "on"
    }
    database_flags {
      name  = "cloudsql.enable_pgaudit"
      value = "on"
    }
    database_flags {
      name  = "pgaudit.log"
      value = "ddl,role"
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

resource "google_sql_database" "rollcall" {
  name     = local.db_name
  instance = google_sql_database_instance.this.name

  # Postgres refuses to drop a database others still use; it goes with the instance.
  deletion_policy = "ABANDON"
}

resource "random_password" "db" {
  length  = 32
  special = false # goes into a postgres:// URL unescaped
}

resource "google_sql_user" "rollcall" {
  name     = local.db_user
  instance = google_sql_database_instance.this.name
  password = random_password.db.result

  # Postgres refuses to drop a role that owns tables; it goes with the instance.
  deletion_policy = "ABANDON"
}

# ---------------------------------------------------------------------------------------
# Memorystore for Redis: private services access, AUTH required.
# ---------------------------------------------------------------------------------------

resource "google_redis_instance" "this" {
  name           = "${var.name}-redis"
  region         = var.region
  tier           = var.redis_tier
  memory_size_gb = var.redis_memory_size_gb
  redis_version  = var.redis_version
  display_name   = "Rollcall embedding mirror and events"

  authorized_network = google_compute_network.this.id
  connect_mode       = "PRIVATE_SERVICE_ACCESS"
  auth_enabled       = true

  # checkov:skip=CKV_GCP_97:In-transit TLS is off on purpose. The instance has no public endpoint (private services access inside this VPC only) and requires AUTH; Memorystore's TLS uses a per-instance self-signed CA that the client would have to be handed, which the rollcall image does not support yet. Turn on SERVER_AUTHENTICATION once the server accepts rediss:// with a custom CA.
  transit_encryption_mode = "DISABLED"

  maintenance_policy {
    weekly_maintenance_window {
      day = "SUNDAY"
      start_time {
        hours   = 5
        minutes = 0
      }
    }
  }

  labels = local.labels

  depends_on = [google_service_networking_connection.private_services]
}

# ---------------------------------------------------------------------------------------
# Photos: private, versioned, uniform access. Noncurrent versions are purged after
# var.photos_noncurrent_retention_days so an erased user's photos do not linger.
# ---------------------------------------------------------------------------------------

resource "google_storage_bucket" "photos" {
  name          = local.photos_bucket
  location      = upper(var.region)
  storage_class = "STANDARD"
  force_destroy = !var.deletion_protection

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.photos_noncurrent_retention_days
    }
    action {
      type = "Delete"
    }
  }

  soft_delete_policy {
    retention_duration_seconds = 604800
  }

  logging {
    log_bucket        = google_storage_bucket.access_logs.name
    log_object_prefix = "photos"
  }

  labels = local.labels

  depends_on = [google_project_service.apis]
}

# Usage (access) logs of the photo bucket: who read, wrote or deleted which photo.
resource "google_storage_bucket" "access_logs" {
  # checkov:skip=CKV_GCP_62:This bucket is the access-log sink of the photo bucket; logging it into itself (or into yet another bucket) would only log the log writes.
  name          = "${local.photos_bucket}-logs"
  location      = upper(var.region)
  storage_class = "STANDARD"
  force_destroy = !var.deletion_protection

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = var.access_log_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 1
    }
    action {
      type = "Delete"
    }
  }

  labels = local.labels

  depends_on = [google_project_service.apis]
}

# Cloud Storage writes usage logs as this Google-owned group.
resource "google_storage_bucket_iam_member" "access_logs_writer" {
  bucket = google_storage_bucket.access_logs.name
  role   = "roles/storage.objectCreator"
  member = "group:cloud-storage-analytics@google.com"
}

# ---------------------------------------------------------------------------------------
# Artifact Registry: where the CUDA (and CPU) images are pushed.
# ---------------------------------------------------------------------------------------

resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84:The images are builds of public source with public weights (no secrets, no personal data) and are encrypted at rest with Google-managed keys. A customer-managed key would add a Cloud KMS key ring, which can never be deleted, so the stack could not be destroyed and re-created under the same names.
  location      = var.region
  repository_id = var.name
  format        = "DOCKER"
  description   = "Rollcall container images"

  labels = local.labels

  depends_on = [google_project_service.apis]
}
