{
  image_ref: $image,
  commit_sha: $sha,
  repo_full_name: $repo,
  ref: $ref,
  findings: [
    (if type == "array" then . else (.Results // []) end)[]
    | .Target as $target
    | (.Vulnerabilities // [])[]
    | {
        cve_id: .VulnerabilityID,
        severity: (.Severity // "UNKNOWN"),
        package_name: .PkgName,
        installed_version: (.InstalledVersion // ""),
        fixed_version: .FixedVersion,
        title: .Title,
        target: (if (.PkgPath // "") == "" then $target else .PkgPath end),
        primary_url: .PrimaryURL,
        references: (.References // []),
        vendor_ids: (.VendorIDs // [])
      }
  ]
}
