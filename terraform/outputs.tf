output "url" {
  description = "Public URL of Rollcall (serves once DNS points at load_balancer_ip and the managed certificate is ACTIVE)."
  value       = "https://${var.domain}"
}

output "load_balancer_ip" {
  description = "Global IPv4 address of the load balancer: the A record of var.domain."
  value       = google_compute_global_address.lb.address
}

output "certificate_name" {
  description = "Managed certificate; `gcloud compute ssl-certificates describe NAME --global` shows its provisioning status."
  value       = google_compute_managed_ssl_certificate.this.name
}

output "artifact_registry" {
  description = "Docker repository to push the images to (docker tag/push IMAGE to <this>/rollcall:TAG)."
  value       = "${local.registry_host}/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "cloud_sql_connection_name" {
  description = "Cloud SQL instance connection name (project:region:instance), for the Cloud SQL Auth Proxy and gcloud."
  value       = google_sql_database_instance.this.connection_name
}

output "cloud_sql_private_ip" {
  description = "Private IP of PostgreSQL (client-certificate TLS required: connect through the Cloud SQL Auth Proxy)."
  value       = google_sql_database_instance.this.private_ip_address
}

output "database" {
  description = "Database and user Rollcall connects as; the password is in Secret Manager (db_password_secret)."
  value       = { name = google_sql_database.rollcall.name, user = google_sql_user.rollcall.name }
}

output "redis_instance" {
  description = "Memorystore instance id (projects/…/locations/…/instances/…)."
  value       = google_redis_instance.this.id
}

output "redis_endpoint" {
  description = "Private host:port of Memorystore; the AUTH string is in Secret Manager (redis_auth_secret)."
  value       = "${google_redis_instance.this.host}:${google_redis_instance.this.port}"
}

output "photos_bucket" {
  description = "Photo storage URL handed to the server as ROLLCALL_STORAGE_URL."
  value       = "gs://${google_storage_bucket.photos.name}/photos"
}

output "admin_key_secret" {
  description = "Secret holding the first admin API key: gcloud secrets versions access latest --secret=<this>."
  value       = google_secret_manager_secret.this["admin-key"].secret_id
}

output "db_password_secret" {
  description = "Secret holding the database password."
  value       = google_secret_manager_secret.this["db-password"].secret_id
}

output "redis_auth_secret" {
  description = "Secret holding the Memorystore AUTH string."
  value       = google_secret_manager_secret.this["redis-auth"].secret_id
}

output "instance_group_manager" {
  description = "Regional managed instance group running the GPU replicas."
  value       = google_compute_region_instance_group_manager.rollcall.name
}

output "service_account" {
  description = "Service account the replicas run as."
  value       = google_service_account.vm.email
}
