{
  image_ref: $image,
  commit_sha: $sha,
  repo_full_name: $repo,
  ref: $ref,
  findings: [
    .Results[] | .Target as $target | .Vulnerabilities[] | {
      cve_id: .VulnerabilityID,
      severity: .Severity,
      package_name: .PkgName,
      installed_version: .InstalledVersion,
      fixed_version: .FixedVersion,
      title: .Title,
      target: (.PkgPath // $target)
    }
  ]
}
